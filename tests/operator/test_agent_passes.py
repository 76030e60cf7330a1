"""An incident's pass contains an agent it read a moment before: what the agent's own passes did meanwhile is kept."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import AD, Cluster, example
from tests.operator.test_agentdeployment import wired_revision
from tourniquet.adapters.kube import ApiError
from tourniquet.reconcilers.agentdeployment import parse_agent
from tourniquet.reconcilers.agents import Agents


async def _pass(agents: Agents, namespace: str) -> None:
    """The agent's full pass, retried as its queue would on a transient error (a real API server answers 429 while
    a resource's storage is initializing)."""
    for _ in range(50):
        try:
            await agents.reconcile(namespace, "refund-agent")
            return
        except ApiError as error:
            if not error.transient:
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("the agent's pass kept failing")


def _new_prompt(cluster: Cluster, text: str) -> None:
    cluster.patch(AD, "refund-agent", {"spec": {"bundle": {"prompt": {"template": text}}}})


async def test_an_agent_read_before_its_own_passes_is_not_reconciled_back_to_what_it_read(
    cluster: Cluster, kube: Any
):
    agents = Agents(kube, lambda namespace: [])
    cluster.apply(example())
    await _pass(agents, cluster.namespace)
    assert wired_revision(cluster) == "1"

    # An incident's pass reads the agent just after a new prompt (revision 2), which its own pass has not seen yet ...
    _new_prompt(cluster, "You are the refund assistant, v2.")
    mark = agents.mark()
    read_by_the_incident = cluster.get(AD, "refund-agent")
    # ... and, before the incident's pass gets the agent, the agent's own passes roll out revision 2, then a fix (3).
    await _pass(agents, cluster.namespace)
    _new_prompt(cluster, "You are the refund assistant, v3.")
    await _pass(agents, cluster.namespace)
    assert wired_revision(cluster) == "3"

    await agents.contain(read_by_the_incident, parse_agent(read_by_the_incident), [], {}, read_after=mark)

    # The consumers still run the fix, not the prompt the incident's pass read.
    assert wired_revision(cluster) == "3"
    status = cluster.status(AD, "refund-agent")
    assert status["observedGeneration"] == cluster.get(AD, "refund-agent")["metadata"]["generation"]
    assert status["bundle"]["revision"] == 3, status["bundle"]
