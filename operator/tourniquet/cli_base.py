"""The `tourniquet` command group and what its commands share: the kubeconfig options, the namespace, failing."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click

T = TypeVar("T")


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(1)


def _run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro_fn())  # type: ignore[arg-type]


def _kube_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--kubeconfig", envvar="KUBECONFIG", default=None, help="Path to a kubeconfig file.")(fn)
    fn = click.option("--context", "kube_context", default=None, help="The kubeconfig context to use.")(fn)
    fn = click.option("-n", "--namespace", default=None, help="Namespace (default: the context's, else default).")(fn)
    return fn


def _namespace(namespace: str | None, kubeconfig: str | None, kube_context: str | None) -> str:
    if namespace:
        return namespace
    try:
        import yaml

        path = Path(kubeconfig or os.path.expanduser("~/.kube/config")).expanduser()
        config = yaml.safe_load(path.read_text()) or {}
        current = kube_context or config.get("current-context")
        for entry in config.get("contexts") or []:
            if entry.get("name") == current:
                return str((entry.get("context") or {}).get("namespace") or "default")
    except (OSError, ValueError):
        pass
    return "default"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tourniquet-operator")
def main() -> None:
    """Tourniquet: stop a misbehaving AI agent in seconds, pin its bundles, and roll back cleanly."""
