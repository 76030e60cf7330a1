"""The review commands of `tourniquet` (also `kubectl tourniquet`): the redeploy gate's override, and, as they are
built, regression cases, readiness, drills and postmortems. Importing this module (which `tourniquet.cli` does)
adds them to the main group."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from tourniquet.cli import _fail, _kube_options, _namespace, _run, main


async def whoami(api: Any) -> str | None:
    """The user the API server sees (a SelfSubjectReview, which every authenticated user may ask for)."""
    from tourniquet.adapters.kube import SELFSUBJECTREVIEWS, ApiError

    try:
        review = await api.create(
            SELFSUBJECTREVIEWS, None, {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        )
    except ApiError:
        return None
    user = ((review.get("status") or {}).get("userInfo") or {}).get("username")
    return str(user) if user else None


# ---------------------------------------------------------------- gate


@click.group()
def gate() -> None:
    """The redeploy gate: a new bundle revision rolls out only once its evaluation Job passed."""


@gate.command()
@click.argument("agent")
@click.option("--revision", type=int, required=True, help="The bundle revision to roll out without its evaluation.")
@click.option("--reason", required=True, help="Why (kept on the revision, with who and when).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait until the agent runs the revision.")
@click.option("--timeout", type=float, default=60, show_default=True)
@_kube_options
def override(
    agent: str,
    revision: int,
    reason: str,
    wait: bool,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
    namespace: str | None,
) -> None:
    """Roll AGENT's revision out in an emergency, without (or despite) its evaluation: recorded, with a reason.

    Sets spec.evaluation.override (GitOps users commit that field instead)."""
    if not reason.strip():
        _fail("--reason is empty: say why this revision may skip its evaluation (it is recorded)")
    ns = _namespace(namespace, kubeconfig, kube_context)
    _run(lambda: _override(agent, ns, revision, reason.strip(), wait, timeout, kubeconfig, kube_context))


async def _override(
    agent: str,
    namespace: str,
    revision: int,
    reason: str,
    wait: bool,
    timeout: float,
    kubeconfig: str | None,
    kube_context: str | None,
) -> None:
    from tourniquet.adapters.kube import AGENTDEPLOYMENTS, CONFIGMAPS, ApiError, KubeApi
    from tourniquet.domain import bundles, names
    from tourniquet.models import RevisionVerdict

    api = await KubeApi.from_config(kubeconfig, kube_context)
    try:
        body = await api.get_or_none(AGENTDEPLOYMENTS, namespace, agent)
        if body is None:
            _fail(f"AgentDeployment {agent} not found in namespace {namespace}")
            return
        if not (body.get("spec") or {}).get("evaluation"):
            _fail(f"{agent} has no spec.evaluation: nothing gates its revisions, there is nothing to override")
        cms = await api.list(CONFIGMAPS, namespace, label_selector=names.bundle_selector(agent))
        stored = {s.revision: s for s in map(bundles.stored_revision_from_configmap, cms) if s}
        kept = ", ".join(str(r) for r in sorted(stored)) or "none"
        if revision not in stored:
            _fail(f"{agent} has no bundle revision {revision} (kept: {kept}); nothing was changed")
        if stored[revision].verdict == RevisionVerdict.BAD:
            _fail(f"revision {revision} is marked bad (an incident took it out): an override does not run it")
        by = await whoami(api)
        record = {"revision": revision, "reason": reason, **({"by": by} if by else {})}
        await api.patch(AGENTDEPLOYMENTS, namespace, agent, {"spec": {"evaluation": {"override": record}}})
        click.echo(f"Overrode the evaluation of {agent} revision {revision} ({by or 'user unknown'}: {reason}).")
        if wait:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                status = (await api.get(AGENTDEPLOYMENTS, namespace, agent)).get("status") or {}
                if (status.get("bundle") or {}).get("revision") == revision:
                    click.echo(f"{agent} runs revision {revision}.")
                    return
                await asyncio.sleep(0.5)
            _fail(f"timed out after {timeout:.0f}s waiting for {agent} to run revision {revision}; see its conditions")
    except ApiError as error:
        _fail(f"Kubernetes API: {error.message or error}")
    finally:
        await api.close()


def register(group: click.Group) -> None:
    group.add_command(gate)


register(main)
