"""Operator start-up: every setting in one place, clients built once and kept in `memo`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterable
from typing import Any, cast

import kopf

from tourniquet import heap, observability
from tourniquet.adapters.kube import KubeApi
from tourniquet.domain.names import PREFIX
from tourniquet.reconcilers.lane import Lane

# The kinds the operator watches only with indexers and event handlers (no change handler, no daemon): nothing
# compares their essence, so none is built for them. By (apiVersion, kind) as the watch delivers the object; an
# object without them (a listed item, on some servers) gets Kopf's essence.
UNCOMPARED_KINDS = frozenset(
    {
        ("v1", "ConfigMap"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("batch/v1", "Job"),
        ("tourniquet.dev/v1alpha1", "AgentIncident"),
        ("tourniquet.dev/v1alpha1", "AgentRegressionCase"),
    }
)


class SlimDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """Kopf's annotation storage, building the same essence without deep-copying the status first, and none at all
    for the kinds no handler compares (UNCOMPARED_KINDS).

    Kopf builds an object's essence (what its change handlers compare) on every watch event of every watched
    object: it deep-copies the whole body, then drops the status. An incident's status holds its timeline, which
    every status write lengthens, incidents have no change handler at all, and in a burst of SEV1s every lever
    write's echo (a control ConfigMap, a NetworkPolicy) is an event too."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        if _uncompared(body):
            return cast(kopf.BodyEssence, {})
        fields = list(extra_fields or [])
        if any(_in_status(field) for field in fields):  # a handler for a status field: Kopf's own way
            return super().build(body=body, extra_fields=fields)
        slim = kopf.Body(cast(kopf.RawBody, {key: value for key, value in body.items() if key != "status"}))
        return super().build(body=slim, extra_fields=fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if _uncompared(body):
            return None
        return super().fetch(body=body)


def _uncompared(body: kopf.Body) -> bool:
    return (body.get("apiVersion"), body.get("kind")) in UNCOMPARED_KINDS


def _in_status(field: Any) -> bool:
    head = field.split(".", 1)[0] if isinstance(field, str) else (field[0] if field else None)
    return head == "status"


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The in-cluster service account, else $KUBECONFIG read now (not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = SlimDiffBaseStorage(prefix=PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    # Kopf's default retry delay for arbitrary errors is 60 s: far too slow for incident response.
    settings.execution.max_workers = 20
    settings.networking.error_backoffs = [0.5, 1, 2, 3, 5, 8, 13]
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    memo.api = await KubeApi.from_config(os.environ.get("KUBECONFIG"), os.environ.get("TOURNIQUET_KUBE_CONTEXT"))
    logger.info("Connected to the Kubernetes API at %s", memo.api.host)
    memo.lane = Lane()  # containment first, paperwork after: one background lane for the whole operator
    memo.metrics = observability.OperatorMetrics()  # served on /metrics by the receiver


@kopf.on.startup()
async def tune_heap(memo: Any, **_: Any) -> None:
    """A higher young threshold now, the heap frozen once the operator has settled (see tourniquet.heap)."""
    memo.heap_task = asyncio.create_task(heap.tune_heap(), name="tourniquet-heap")


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task started at start-up and wait until it has finished."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@kopf.on.cleanup()
async def untune_heap(memo: Any, **_: Any) -> None:
    await stop_task(getattr(memo, "heap_task", None))


@kopf.on.cleanup()
async def close_lane(memo: Any, **_: Any) -> None:
    """The work still waiting for a quiet moment is dropped: a finalizer is added by the next start's pass, an Event
    is not posted (the timeline has it)."""
    lane = getattr(memo, "lane", None)
    if lane is not None:
        await lane.close()


# No cleanup closes `memo.api`: Kopf runs cleanup while cancelled handlers may still be in a request, and
# closing the connection pool under them turns a clean stop into errors Kopf re-raises at exit. The
# pool goes with the process.
