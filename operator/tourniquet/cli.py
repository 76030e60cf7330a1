"""The `tourniquet` command line (also `kubectl tourniquet`): `run`, `crds` and `sandbox` here; the on-call
commands in cli_agents (rollback, status), cli_incidents (contain, release), cli_ledger (blast-radius, trace,
compensate), cli_review (gate, regression, cases), cli_readiness (readiness, drill) and cli_postmortem
(postmortem)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

# The shared helpers are imported from here too (the command modules of other features).
from tourniquet.cli_base import _fail, _kube_options, _namespace, _run, main  # noqa: F401


@main.command()
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Watch only these namespaces (repeatable).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch every namespace (the default without -n).")
@click.option("--liveness", default="http://0.0.0.0:8080/healthz", show_default=True, help="Kopf probe endpoint.")
@click.option("--priority", type=int, default=0, help="Kopf peering priority (when running several replicas).")
@click.option("--peering", default=None, help="Kopf peering object name; standalone when unset.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="TOURNIQUET_LOG_FORMAT",
    help="json: one object per line (time, level, logger, message, object). Env: TOURNIQUET_LOG_FORMAT.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs.")
def run(
    namespaces: tuple[str, ...],
    all_namespaces: bool,
    liveness: str,
    priority: int,
    peering: str | None,
    log_format: str,
    verbose: bool,
) -> None:
    """Run the operator against the cluster in $KUBECONFIG (or in-cluster)."""
    from tourniquet import logs
    from tourniquet.runner import run_operator

    logs.configure(log_format, verbose=verbose)
    _run(lambda: run_operator(list(namespaces), liveness=liveness, priority=priority, peering=peering))


@main.command()
@click.option("--check", is_flag=True, help="Fail if the committed CRDs differ from the models.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("."), show_default=True)
def crds(check: bool, root: Path) -> None:
    """Generate crds/ (and the chart's copy) from the pydantic models."""
    from tourniquet import crdgen

    if check:
        problems = crdgen.check_crds(root)
        for problem in problems:
            click.secho(problem, fg="red", err=True)
        if problems:
            sys.exit(1)
        click.echo("CRDs are up to date.")
        return
    for path in crdgen.write_crds(root):
        click.echo(f"wrote {path}")


@main.command()
@click.option(
    "--dir",
    "workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".sandbox"),
    show_default=True,
    help="Where the kubeconfig is written.",
)
@click.option("--port", type=int, default=0, help="API server port (default: a free one).")
@click.option("--examples/--no-examples", default=True, show_default=True, help="Apply examples/ at start.")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    envvar="TOURNIQUET_LOG_FORMAT",
    help="The operator's log format, as for `tourniquet run`.",
)
@click.option("-v", "--verbose", is_flag=True, help="Debug logs.")
def sandbox(workdir: Path, port: int, examples: bool, log_format: str, verbose: bool) -> None:
    """Run an embedded Kubernetes API server with the CRDs and the operator: no cluster needed.

    Everything binds loopback: the API server on --port (a free one by default), the operator's /metrics
    and Alertmanager receiver on TOURNIQUET_HTTP_PORT (9090), or a free port when that one is taken."""
    from tourniquet.sandbox.run import EmulatorMissing, run_sandbox

    try:
        run_sandbox(workdir=workdir, port=port, examples=examples, log_format=log_format, verbose=verbose)
    except EmulatorMissing as e:
        raise click.ClickException(str(e)) from None


# The on-call commands register themselves on `main` when imported.
from tourniquet import cli_agents, cli_incidents, cli_ledger, cli_postmortem, cli_readiness, cli_review  # noqa: E402, F401

if __name__ == "__main__":
    main()
