"""Operator start-up: every setting in one place, clients built once and kept in `memo`."""

from __future__ import annotations

import logging
import os
from typing import Any

import kopf

from tourniquet.adapters.kube import KubeApi
from tourniquet.domain.names import PREFIX


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """The in-cluster service account, else $KUBECONFIG read now (not at import time)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: Any, logger: kopf.Logger, **_: Any) -> None:
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    # Kopf's default retry delay for arbitrary errors is 60 s: far too slow for incident response.
    settings.execution.max_workers = 20
    settings.networking.error_backoffs = [0.5, 1, 2, 3, 5, 8, 13]
    settings.watching.connect_timeout = 10
    settings.watching.server_timeout = 300
    memo.api = await KubeApi.from_config(os.environ.get("KUBECONFIG"), os.environ.get("TOURNIQUET_KUBE_CONTEXT"))
    logger.info("Connected to the Kubernetes API at %s", memo.api.host)


# No cleanup closes `memo.api`: Kopf runs cleanup while cancelled handlers may still be in a request, and
# closing the connection pool under them turns a clean stop into errors Kopf re-raises at exit. The
# pool goes with the process.
