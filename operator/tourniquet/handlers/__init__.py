"""Kopf handlers: the only code that imports kopf decorators. Importing this package registers them."""

from tourniquet.handlers import agentdeployments, agentincidents, startup

__all__ = ["agentdeployments", "agentincidents", "startup"]
