"""The real control plane the operator tests run on: built from the pinned modules, started and stopped cleanly."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.controlplane import ROOT, ControlPlane, versions

GO = shutil.which("go")


def requirements_at_v0(gomod: str) -> set[str]:
    """The k8s.io modules a go.mod requires at v0.0.0 (the staging modules kubernetes replaces locally)."""
    return set(re.findall(r"^\s*(k8s\.io/[\w./-]+) v0\.0\.0\s*$", gomod, flags=re.MULTILINE))


def replaces(gomod: str) -> dict[str, str]:
    return dict(re.findall(r"^\s*(k8s\.io/[\w./-]+) => k8s\.io/[\w./-]+ (v[\w.-]+)\s*$", gomod, flags=re.MULTILINE))


@pytest.mark.skipif(GO is None, reason="needs the go command")
def test_the_kube_module_replaces_every_staging_module_kubernetes_requires_at_v0() -> None:
    kube = versions()["KUBE_VERSION"]
    downloaded = subprocess.run(
        ["go", "mod", "download", "-json", f"k8s.io/kubernetes@{kube}"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT / "controlplane" / "kube",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    )
    upstream = Path(json.loads(downloaded.stdout)["GoMod"]).read_text()
    ours = (ROOT / "controlplane" / "kube" / "go.mod").read_text()
    staging = requirements_at_v0(upstream)
    assert len(staging) > 20, "kubernetes' go.mod should list its staging modules at v0.0.0"
    assert replaces(ours) == dict.fromkeys(staging, "v0." + kube.removeprefix("v1.")), (
        "controlplane/kube/go.mod is out of date: run `make controlplane-gomod`"
    )
    assert re.search(rf"^\s*k8s\.io/kubernetes {re.escape(kube)}\s*$", ours, flags=re.MULTILINE)


def test_etcd_is_the_version_kubernetes_ships() -> None:
    etcd = versions()["ETCD_VERSION"]
    gomod = (ROOT / "controlplane" / "etcd" / "go.mod").read_text()
    assert f"go.etcd.io/etcd/server/v3 {etcd}" in gomod
    kube_sum = (ROOT / "controlplane" / "kube" / "go.sum").read_text()
    assert f"go.etcd.io/etcd/client/v3 {etcd} " in kube_sum, "kubernetes' own etcd client is at the same version"


def test_the_api_server_reports_the_pinned_version(control_plane: ControlPlane) -> None:
    assert control_plane.version()["gitVersion"] == versions()["KUBE_VERSION"]


def test_a_control_plane_stops_leaving_nothing_running(control_plane: ControlPlane) -> None:
    """Another one beside the session's: its own ports and folder; stopped, its processes are gone."""
    with ControlPlane(control_plane.bin_dir) as plane:
        assert plane.url != control_plane.url
        workdir = plane.workdir
        pids = [p.popen.pid for p in plane.processes]
        names = [p.name for p in plane.processes]
        assert names == ["etcd", "kube-apiserver", "kube-controller-manager"]
        assert [n["metadata"]["name"] for n in plane.request("GET", "/api/v1/namespaces")["items"]]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert workdir is not None and not workdir.exists()
