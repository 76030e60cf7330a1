"""Kopf handlers: the only code that imports kopf decorators. Importing this package registers them.

`startup` comes first: Kopf runs start-up handlers in the order they were registered, and the others
use the API client it puts in `memo`.
"""

from tourniquet.handlers import startup  # isort: skip
from tourniquet.handlers import agentdeployments, agentincidents
from tourniquet.handlers import detection as detection  # detection daemons, the receiver and /metrics
from tourniquet.handlers import drill as drill  # drills: one daemon per AgentDrill
from tourniquet.handlers import freshness as freshness  # watch freshness: the canary, event ages, the probe
from tourniquet.handlers import gate as gate  # the redeploy gate: evaluation Jobs finishing
from tourniquet.handlers import postmortem as postmortem  # postmortems of resolved incidents, and on demand
from tourniquet.handlers import regression as regression  # regression cases: does their agent exist

__all__ = ["agentdeployments", "agentincidents", "startup"]
