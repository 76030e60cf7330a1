"""The operator's log output: Kopf's text format, or one JSON object per line.

Kopf configures logging only from its own command line (`kopf run` calls ``kopf.configure``); an
operator embedded with ``kopf.operator()``, as ``tourniquet run`` is, configures it itself. Kopf's
per-object loggers (the ``logger`` a handler receives) attach the object to every record as
``record.k8s_ref`` (apiVersion, kind, namespace, name, uid); both formats name it.

* ``text``: ``kopf.configure``, i.e. Kopf's own format with the object as a ``[namespace/name]`` prefix.
* ``json``: the same handler set-up with :class:`JsonFormatter`: ``time`` (RFC 3339, UTC), ``level``,
  ``logger``, ``message``, ``object`` when Kopf gives one, ``exception`` with the traceback.
  (Kopf's own JSON format has no logger name and calls the level ``severity``.)
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

FORMATS = ("text", "json")
ENV_FORMAT = "TOURNIQUET_LOG_FORMAT"

_OBJECT_FIELDS = ("apiVersion", "kind", "namespace", "name", "uid")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (tracebacks included)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            entry["object"] = {k: ref[k] for k in _OBJECT_FIELDS if ref.get(k)}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


# Kopf logs "Handler '<id>' succeeded." at INFO after every call of a handler, including a watch-event
# handler. Incidents are driven from one (every event of every incident: its creation, the echo of each
# status write, its finalizer), so that would be several lines per incident saying nothing; what a pass did
# is logged by the pass itself. Hidden unless --verbose.
# The same for the review features' watch-event handlers (an agent's every event, every evaluation Job's).
_QUIET_HANDLERS = (
    "incident_event",
    "agent_added_or_deleted",
    "case_event",
    "evaluation_job_event",
)
_QUIET_MESSAGES = frozenset(f"Handler '{name}' succeeded." for name in _QUIET_HANDLERS)


class _QuietEventHandlerSuccesses(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg in _QUIET_MESSAGES)


_QUIET = _QuietEventHandlerSuccesses()


class _JsonStreamHandler(logging.StreamHandler):
    """Ours, so that configuring twice replaces it instead of logging every line twice."""


def configure(log_format: str = "text", *, verbose: bool = False) -> None:
    """Set up the root logger for `tourniquet run`."""
    import kopf

    if log_format not in FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; use one of {', '.join(FORMATS)}")
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, _JsonStreamHandler)]
    # Kopf's health endpoint logs every request (aiohttp's access log) and every run of the probe handlers at
    # INFO: lines each time the kubelet probes, which is no news.
    for name in ("kopf.activities.probe", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    objects = logging.getLogger("kopf.objects")
    objects.removeFilter(_QUIET)
    if not verbose:
        objects.addFilter(_QUIET)
    if log_format == "text":
        kopf.configure(verbose=verbose, log_prefix=True)
        return
    # Kopf's levels and its silencing of asyncio's debug chatter; then our handler instead of the one it added.
    before = list(root.handlers)
    kopf.configure(verbose=verbose)
    root.handlers[:] = [h for h in root.handlers if h in before]
    handler = _JsonStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root.addHandler(handler)
