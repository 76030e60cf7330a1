"""A real control plane on loopback: etcd, kube-apiserver and kube-controller-manager, started like envtest.

The binaries come from `make controlplane` (built from Go modules, see controlplane/). Everything runs from a
temporary folder: generated certificates, etcd's data, kubeconfigs, the audit log. Ports are picked free at
start; nothing is left running after `stop()` (each process is in its own process group and is killed with
it if it does not stop on SIGTERM).

For humans::

    make controlplane                      # build once (cached)
    .venv/bin/python -m tests.controlplane # start, print the export line, run until Ctrl-C

Users: `admin` (a client certificate in system:masters) for set-up and assertions; any ServiceAccount can be
given a token with :meth:`ControlPlane.service_account_kubeconfig` (TokenRequest, signed by the API server).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"  # the first address of the service CIDR: the `kubernetes` Service
# The controllers the tests rely on: garbage collection by ownerReferences, Deployments → ReplicaSets →
# Pods, namespace deletion, ServiceAccounts and their tokens.
CONTROLLERS = (
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "namespace-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
)
# Every request with its user and response code: the RBAC tests read who was refused what.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # What the tests and the control plane do is not what the tests look at.
        {"level": "None", "users": ["admin", "system:kube-controller-manager", "system:apiserver"]},
        {"level": "None", "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Request", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "Metadata"},
    ],
}


def versions() -> dict[str, str]:
    values = {}
    for line in (ROOT / "controlplane" / "versions.env").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values


def default_bin_dir() -> Path:
    configured = os.environ.get("CONTROLPLANE_BIN")
    if configured:
        return Path(configured)
    v = versions()
    return ROOT / ".controlplane" / f"{v['KUBE_VERSION']}-etcd-{v['ETCD_VERSION']}" / "bin"


def missing_binaries(bin_dir: Path | None = None) -> list[str]:
    bin_dir = bin_dir or default_bin_dir()
    return [b for b in ("etcd", "kube-apiserver", "kube-controller-manager") if not (bin_dir / b).is_file()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- certificates --------------------------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, the API server's serving certificate, and client certificates signed by the CA."""

    folder: Path
    ca_key: Any = None
    ca_cert: Any = None

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder.mkdir(parents=True, exist_ok=True)
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tourniquet-test-ca")])
        now = datetime.datetime.now(datetime.UTC)
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        self._write("ca.crt", self._cert_pem(self.ca_cert))

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    def issue(
        self, stem: str, common_name: str, groups: tuple[str, ...] = (), server: bool = False
    ) -> tuple[Path, Path]:
        """A key and certificate signed by the CA: `<stem>.key`, `<stem>.crt`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups]
            + [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        )
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address(SERVICE_IP)),
                    ]
                ),
                critical=False,
            )
        cert = builder.sign(self.ca_key, hashes.SHA256())
        return self._write(f"{stem}.key", self._key_pem(key)), self._write(f"{stem}.crt", self._cert_pem(cert))

    def service_account_keys(self) -> tuple[Path, Path]:
        """The key pair the API server signs ServiceAccount tokens with (private, public)."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return self._write("sa.key", self._key_pem(key)), self._write("sa.pub", public)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    @staticmethod
    def _cert_pem(cert: Any) -> bytes:
        from cryptography.hazmat.primitives import serialization

        data: bytes = cert.public_bytes(serialization.Encoding.PEM)
        return data

    @staticmethod
    def _key_pem(key: Any) -> bytes:
        from cryptography.hazmat.primitives import serialization

        data: bytes = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return data


# -- the processes -------------------------------------------------------------------------------------------


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class ControlPlaneError(RuntimeError):
    pass


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL it when the process that started it dies (Linux), so a test run
    that is killed leaves nothing running."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


@dataclass
class ControlPlane:
    """etcd + kube-apiserver + kube-controller-manager from `bin_dir`, in a temporary folder of their own."""

    bin_dir: Path = field(default_factory=default_bin_dir)
    workdir: Path | None = None
    keep_workdir: bool = False
    processes: list[_Process] = field(default_factory=list)
    url: str = ""
    admin_kubeconfig: Path = Path()
    audit_log: Path = Path()
    pki: Pki | None = None
    _own_workdir: bool = False

    # -- lifecycle --

    def start(self, timeout: float = 90.0) -> ControlPlane:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ControlPlaneError(f"missing {', '.join(missing)} in {self.bin_dir}: run `make controlplane`")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="tourniquet-controlplane-"))
            self._own_workdir = True
        try:
            self._start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        assert self.workdir is not None
        work = self.workdir
        pki = self.pki = Pki(work / "pki")
        serving_key, serving_crt = pki.issue("apiserver", "kube-apiserver", server=True)
        admin_key, admin_crt = pki.issue("admin", "admin", groups=("system:masters",))
        kcm_key, kcm_crt = pki.issue("controller-manager", "system:kube-controller-manager")
        sa_key, sa_pub = pki.service_account_keys()

        etcd_client, etcd_peer = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={work / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
        )

        port = free_port()
        self.url = f"https://127.0.0.1:{port}"
        policy = work / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.audit_log = work / "audit.log"
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",  # no kubernetes Endpoints for a loopback address
                f"--secure-port={port}",
                f"--tls-cert-file={serving_crt}",
                f"--tls-private-key-file={serving_key}",
                f"--client-ca-file={pki.ca_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--authorization-mode=RBAC",
                "--disable-admission-plugins=ServiceAccount",
                # As on clusters that enforce it (OpenShift among them): setting blockOwnerDeletion on an
                # ownerReference needs update on the owner's finalizers subresource.
                "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
                f"--service-account-issuer={self.url}/",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                f"--cert-dir={work / 'apiserver-certs'}",
                "--v=0",
            ],
        )
        self.admin_kubeconfig = self._kubeconfig(
            "admin", {"client-certificate": str(admin_crt), "client-key": str(admin_key)}
        )
        kcm_kubeconfig = self._kubeconfig(
            "controller-manager", {"client-certificate": str(kcm_crt), "client-key": str(kcm_key)}
        )
        self._wait_ready(timeout)

        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kcm_kubeconfig}",
                f"--controllers={','.join(CONTROLLERS)}",
                "--leader-elect=false",
                # Each controller as its own ServiceAccount, with the roles Kubernetes bootstraps for it (as in
                # production): the controller manager's own user may only start them.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={pki.ca_file}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--authentication-kubeconfig={kcm_kubeconfig}",
                f"--authorization-kubeconfig={kcm_kubeconfig}",
                # Quick namespace clean-up between tests; the default sync is 5 minutes.
                "--namespace-sync-period=10s",
                "--concurrent-gc-syncs=5",
                "--v=0",
            ],
        )
        self._wait_for_namespace("default", timeout)

    def stop(self) -> None:
        """Stop every process, last started first (the API server shuts down quickly only while etcd is there):
        SIGTERM, then SIGKILL to its process group. Remove the temporary folder."""
        for process in reversed(self.processes):
            if process.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.popen.pid, signal.SIGKILL)
                process.popen.wait(timeout=10)
        self.processes.clear()
        if self._own_workdir and self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers --

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.workdir is not None
        log = self.workdir / f"{name}.log"
        out = log.open("wb")
        popen = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        out.close()
        self.processes.append(_Process(name, popen, log))

    def _kubeconfig(self, user: str, credentials: dict[str, str]) -> Path:
        assert self.workdir is not None
        path = self.workdir / f"{user}.kubeconfig"
        path.write_text(yaml.safe_dump(kubeconfig_document(self.url, self.ca_file, user, credentials)))
        path.chmod(0o600)
        return path

    @property
    def ca_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "pki" / "ca.crt"

    def _ssl_context(self) -> ssl.SSLContext:
        assert self.workdir is not None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        pki = self.workdir / "pki"
        context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        return context

    def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """An admin request; the decoded JSON answer (raises urllib.error.HTTPError on an error status)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self._ssl_context(), timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{process.name} exited with code {process.popen.returncode}:\n{process.tail()}"
                )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                req = urllib.request.Request(self.url + "/readyz")
                with urllib.request.urlopen(req, context=self._ssl_context(), timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError, ssl.SSLError) as error:
                last = str(error)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout}s ({last}):\n{self.processes[-1].tail()}")

    def _wait_for_namespace(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(urllib.error.HTTPError):
                self.request("GET", f"/api/v1/namespaces/{name}")
                return
            time.sleep(0.2)
        raise ControlPlaneError(f"namespace {name} never appeared")

    def version(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", "/version")
        return answer

    def service_account_kubeconfig(
        self, namespace: str, name: str, path: Path, *, context_namespace: str | None = None, seconds: int = 86400
    ) -> Path:
        """A kubeconfig for the ServiceAccount (created if missing), with a token the API server signs."""
        with contextlib.suppress(urllib.error.HTTPError):  # 409: it exists
            self.request(
                "POST",
                f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}},
            )
        answer = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": seconds}},
        )
        document = kubeconfig_document(
            self.url, self.ca_file, f"{namespace}-{name}", {"token": answer["status"]["token"]}, context_namespace
        )
        path.write_text(yaml.safe_dump(document))
        path.chmod(0o600)
        return path

    def audit_events(self, since: int = 0) -> tuple[list[dict[str, Any]], int]:
        """The audit log's events from byte offset `since`, and the offset after them."""
        with self.audit_log.open("rb") as log:
            log.seek(since)
            data = log.read()
        end = data.rfind(b"\n") + 1
        events = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        return events, since + end


def kubeconfig_document(
    url: str, ca_file: Path, user: str, credentials: dict[str, str], namespace: str | None = None
) -> dict[str, Any]:
    context: dict[str, Any] = {"cluster": "tourniquet-test", "user": user}
    if namespace:
        context["namespace"] = namespace
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "tourniquet-test", "cluster": {"server": url, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": context}],
        "current-context": user,
    }


@contextlib.contextmanager
def running(bin_dir: Path | None = None) -> Iterator[ControlPlane]:
    plane = ControlPlane(bin_dir or default_bin_dir())
    with plane:
        yield plane


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.controlplane",
        description="Start etcd, kube-apiserver and kube-controller-manager on loopback until interrupted.",
    )
    parser.add_argument(
        "--bin-dir", type=Path, default=None, help="where the binaries are (default: make controlplane's)"
    )
    parser.add_argument("--crds", action="store_true", help="apply crds/*.yaml once it is up")
    args = parser.parse_args(argv)
    plane = ControlPlane(args.bin_dir or default_bin_dir(), keep_workdir=False)
    started = time.monotonic()
    try:
        plane.start()
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    try:
        if args.crds:
            for path in sorted((ROOT / "crds").glob("*.yaml")):
                for doc in yaml.safe_load_all(path.read_text()):
                    plane.request("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", doc)
        version = plane.version()["gitVersion"]
        print(f"kube-apiserver {version} at {plane.url}, up in {time.monotonic() - started:.1f}s")
        print(f"export KUBECONFIG={plane.admin_kubeconfig}")
        print("Ctrl-C stops it and removes everything.", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
