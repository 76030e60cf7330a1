"""Run the operator: Kopf with Tourniquet's handlers, in this process (`tourniquet run`, `tourniquet sandbox`)."""

from __future__ import annotations

from typing import Any


async def run_operator(
    namespaces: list[str],
    *,
    liveness: str | None = None,
    priority: int = 0,
    peering: str | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
) -> None:
    import kopf

    import tourniquet.handlers  # noqa: F401  (registers the handlers)

    memo = kopf.Memo(served_namespaces=tuple(namespaces))
    try:
        await kopf.operator(
            clusterwide=not namespaces,
            namespaces=namespaces,
            standalone=peering is None,
            peering_name=peering,
            priority=priority,
            liveness_endpoint=liveness or None,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=memo,
        )
    finally:
        # Kopf has stopped every handler: the API client's connection pool can go now (not in a cleanup
        # handler, which runs while cancelled handlers may still be in a request).
        api = getattr(memo, "api", None)
        if api is not None:
            await api.close()
