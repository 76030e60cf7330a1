"""`tourniquet run --log-format json`: one JSON object per line, naming the object Kopf gives."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import kopf
import pytest

from tourniquet import logs

BODY = {
    "apiVersion": "tourniquet.dev/v1alpha1",
    "kind": "AgentIncident",
    "metadata": {"name": "dup-refunds", "namespace": "payments", "uid": "1234"},
}


@pytest.fixture
def root_logging() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quieted = {name: logging.getLogger(name).level for name in ("kopf.activities.probe", "aiohttp.access")}
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, was in quieted.items():
        logging.getLogger(name).setLevel(was)


def formatted(logger: logging.Logger | logging.LoggerAdapter, *args: object, **kwargs: object) -> dict:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    target = logger.logger if isinstance(logger, logging.LoggerAdapter) else logger
    target.addHandler(handler)
    try:
        logger.warning(*args, **kwargs)  # type: ignore[arg-type]
    finally:
        target.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    entry: dict = json.loads(line)
    return entry


def test_a_handlers_logger_names_its_object() -> None:
    object_logger = kopf.ObjectLogger(body=kopf.Body(BODY), settings=kopf.OperatorSettings())
    entry = formatted(object_logger, "Refused: %s", "agent ghost not found")
    assert entry["level"] == "WARNING" and entry["logger"] == "kopf.objects"
    assert entry["message"] == "Refused: agent ghost not found"
    assert entry["object"] == {
        "apiVersion": "tourniquet.dev/v1alpha1",
        "kind": "AgentIncident",
        "namespace": "payments",
        "name": "dup-refunds",
        "uid": "1234",
    }
    assert entry["time"].endswith("Z") and "T" in entry["time"]


def test_a_module_logger_has_no_object_and_a_traceback_stays_on_one_line() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        entry = formatted(logging.getLogger("tourniquet.reconcilers"), "Detection pass failed", exc_info=True)
    assert "object" not in entry and entry["logger"] == "tourniquet.reconcilers"
    assert "RuntimeError: boom" in entry["exception"] and "Traceback" in entry["exception"]


def test_configure_json_replaces_the_handler_and_keeps_kopfs_levels(root_logging: logging.Logger) -> None:
    logs.configure("json")
    logs.configure("json")  # twice: still one handler, so no line is logged twice
    ours = [h for h in root_logging.handlers if isinstance(h.formatter, logs.JsonFormatter)]
    assert len(ours) == 1 and root_logging.level == logging.INFO
    assert logging.getLogger("kopf.activities.probe").level == logging.WARNING  # a probe every 10 s is no news
    assert logging.getLogger("aiohttp.access").level == logging.WARNING
    logs.configure("text", verbose=True)
    assert not [h for h in root_logging.handlers if isinstance(h.formatter, logs.JsonFormatter)]
    assert root_logging.level == logging.DEBUG
    with pytest.raises(ValueError, match="unknown log format"):
        logs.configure("yaml")


def test_kopfs_success_line_for_each_incident_event_is_hidden_unless_verbose(root_logging: logging.Logger) -> None:
    incident_logger = kopf.ObjectLogger(body=kopf.Body(BODY), settings=kopf.OperatorSettings())
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logging.getLogger("kopf.objects").addHandler(handler)
    try:
        logs.configure("json")
        incident_logger.info("Handler 'incident_event' succeeded.")
        incident_logger.info("Handler 'agent_changed' succeeded.")  # a change handler's: still said
        incident_logger.warning("Handler 'incident_event' failed with an exception and will stop now: boom")
        logs.configure("json", verbose=True)
        incident_logger.info("Handler 'incident_event' succeeded.")
    finally:
        logging.getLogger("kopf.objects").removeHandler(handler)
        logs.configure("text")
    assert stream.getvalue().splitlines() == [
        "Handler 'agent_changed' succeeded.",
        "Handler 'incident_event' failed with an exception and will stop now: boom",
        "Handler 'incident_event' succeeded.",
    ]


def test_run_text_logs_name_the_incident_of_each_timeline_line(root_logging: logging.Logger) -> None:
    """With two incidents on one agent, each LeverApplied line says which incident it belongs to."""
    from tourniquet.reconcilers.events import log_timeline

    logs.configure("text")
    stream = io.StringIO()
    (kopf_handler,) = [h for h in root_logging.handlers if isinstance(h, logging.StreamHandler)][-1:]
    handler = logging.StreamHandler(stream)
    handler.setFormatter(kopf_handler.formatter)  # the formatter `tourniquet run` set up
    root_logging.addHandler(handler)
    try:
        for name in ("dup-refunds", "queue-flood"):
            entry = {"event": "LeverApplied", "agent": "refund-agent", "message": "drain: 2 → 0 replicas"}
            log_timeline({**BODY, "metadata": {**BODY["metadata"], "name": name}}, [entry])
    finally:
        root_logging.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith("[payments/dup-refunds] LeverApplied: refund-agent: drain: 2 → 0 replicas"), lines
    assert lines[1].endswith("[payments/queue-flood] LeverApplied: refund-agent: drain: 2 → 0 replicas"), lines
