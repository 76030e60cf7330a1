"""Kopf handlers: the only code that imports kopf decorators. Importing this package registers them."""

from tourniquet.handlers import agentdeployments, agentincidents, startup
from tourniquet.handlers import detection as detection  # detection daemons, the receiver and /metrics
from tourniquet.handlers import freshness as freshness  # watch freshness: the canary, event ages, the probe

__all__ = ["agentdeployments", "agentincidents", "startup"]
