"""The `tourniquet` command group and what its commands share: the kubeconfig options (one `Kube` for each
command), the namespace, reading an AgentDeployment, failing."""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T")


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


@dataclass(frozen=True)
class Kube:
    """Where a command works: the kubeconfig (--kubeconfig, else $KUBECONFIG), its context (--context) and the
    namespace (-n, else the context's, else default)."""

    kubeconfig: str | None
    context: str | None
    namespace: str

    async def api(self) -> Any:
        """A client with the user's own credentials (the caller closes it)."""
        from tourniquet.adapters.kube import KubeApi

        return await KubeApi.from_config(self.kubeconfig, self.context)


def _kube_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--kubeconfig, --context and -n: the command gets them as one ``kube: Kube``."""

    @functools.wraps(fn)
    def command(
        *args: Any, kubeconfig: str | None, kube_context: str | None, namespace: str | None, **kwargs: Any
    ) -> Any:
        kube = Kube(kubeconfig, kube_context, _namespace(namespace, kubeconfig, kube_context))
        return fn(*args, kube=kube, **kwargs)

    options = (
        click.option("--kubeconfig", envvar="KUBECONFIG", default=None, help="Path to a kubeconfig file."),
        click.option("--context", "kube_context", default=None, help="The kubeconfig context to use."),
        click.option("-n", "--namespace", default=None, help="Namespace (default: the context's, else default)."),
    )
    wrapped: Callable[..., Any] = command
    for option in options:
        wrapped = option(wrapped)
    return wrapped


def _kubeconfig_context(kubeconfig: str | None, kube_context: str | None) -> dict[str, Any]:
    """The kubeconfig's entry for the context (--context, else its current one): {} when there is none."""
    try:
        import yaml

        path = Path(kubeconfig or os.path.expanduser("~/.kube/config")).expanduser()
        config = yaml.safe_load(path.read_text()) or {}
        current = kube_context or config.get("current-context")
        for entry in config.get("contexts") or []:
            if entry.get("name") == current:
                return dict(entry.get("context") or {})
    except (OSError, ValueError):
        pass
    return {}


def _namespace(namespace: str | None, kubeconfig: str | None, kube_context: str | None) -> str:
    if namespace:
        return namespace
    return str(_kubeconfig_context(kubeconfig, kube_context).get("namespace") or "default")


async def _agent_or_fail(api: Any, namespace: str, agent: str, also: str = "") -> dict[str, Any]:
    """The AgentDeployment named ``agent``; when there is none, fail saying so (and ``also``)."""
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS

    body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
    if body is None:
        _fail(f"AgentDeployment {agent} not found in namespace {namespace}{also}")
    return dict(body or {})


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tourniquet-operator")
def main() -> None:
    """Tourniquet: stop a misbehaving AI agent in seconds, pin its bundles, and roll back cleanly."""
