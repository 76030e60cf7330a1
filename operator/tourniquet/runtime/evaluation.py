"""For an agent's eval command, run by the redeploy gate: read the cases and the candidate bundle, report per case.

The operator runs the eval command (``spec.evaluation.jobTemplate``) as a Job with the candidate bundle revision
and the agent's regression cases mounted, and names them in the environment:

==============================  =====================================================================
``TOURNIQUET_BUNDLE``           the candidate bundle (``/etc/tourniquet/bundle/bundle.json``)
``TOURNIQUET_BUNDLE_REVISION``  its revision number
``TOURNIQUET_EVAL_CASES``       the regression cases, a YAML list (``/etc/tourniquet/cases/cases.yaml``);
                                each is an AgentRegressionCase's ``spec`` plus its ``name``
``TOURNIQUET_EVAL_REPORT``      where the results go: the pod's termination message
                                (``/dev/termination-log``), which the operator reads
==============================  =====================================================================

Usage::

    from tourniquet.runtime.evaluation import Results, load_bundle, load_cases

    bundle, results = load_bundle(), Results()
    for case in load_cases():
        ok, why = replay(bundle, case)          # the agent's own check
        results.record(case["name"], ok, why)
    raise SystemExit(results.write())          # 0: every case passed, 1: some failed

The report is one JSON object, ``{"passed": [...], "failed": [{"name": ..., "message": ...}]}``, at most
4096 bytes (what the kubelet keeps of a termination message): messages are shortened first, and a case that
does not fit is left out, which the gate counts as failed. Exit code 1 makes the Job fail at once (its
podFailurePolicy); any other non-zero exit is an error the Job retries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

REPORT_LIMIT = 4096
EXIT_PASSED = 0
EXIT_FAILED = 1
DEFAULT_CASES = "/etc/tourniquet/cases/cases.yaml"
DEFAULT_BUNDLE = "/etc/tourniquet/bundle/bundle.json"
DEFAULT_REPORT = "/dev/termination-log"


def load_cases(path: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """The regression cases (``$TOURNIQUET_EVAL_CASES``); an empty list when the agent has none yet."""
    text = Path(path or os.environ.get("TOURNIQUET_EVAL_CASES") or DEFAULT_CASES).read_text()
    cases = yaml.safe_load(text) or []
    if not isinstance(cases, list):
        raise ValueError(f"{path}: the regression cases are a YAML list, not {type(cases).__name__}")
    return [c for c in cases if isinstance(c, dict)]


def load_bundle(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The candidate bundle (``$TOURNIQUET_BUNDLE``): model, prompt and tools, as the agent would run it."""
    bundle = json.loads(Path(path or os.environ.get("TOURNIQUET_BUNDLE") or DEFAULT_BUNDLE).read_text())
    if not isinstance(bundle, dict):
        raise ValueError(f"{path}: the bundle is a JSON object")
    return bundle


class Results:
    """Per-case outcomes, written as the gate reads them."""

    def __init__(self) -> None:
        self.passed: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def record(self, name: str, ok: bool, message: str = "") -> None:
        if ok:
            self.passed.append(name)
        else:
            self.failed.append((name, message))

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_PASSED

    def text(self, limit: int = REPORT_LIMIT) -> str:
        """The report, within `limit` bytes: failures first keep their names; messages shrink before anything
        is left out."""
        for message_limit in (500, 120, 40, 0):
            failed = [
                {"name": n, **({"message": m[:message_limit]} if m and message_limit else {})} for n, m in self.failed
            ]
            text = json.dumps({"passed": self.passed, "failed": failed}, separators=(",", ":"))
            if len(text.encode()) <= limit:
                return text
        # Still too long: keep every failure's name, then as many passes as fit (the rest count as failed).
        report: dict[str, Any] = {"passed": [], "failed": [n for n, _ in self.failed]}
        for name in self.passed:
            report["passed"].append(name)
            if len(json.dumps(report, separators=(",", ":")).encode()) > limit:
                report["passed"].pop()
                break
        while len(json.dumps(report, separators=(",", ":")).encode()) > limit and report["failed"]:
            report["failed"].pop()
        return json.dumps(report, separators=(",", ":"))

    def write(self, path: str | os.PathLike[str] | None = None) -> int:
        """Write the report (``$TOURNIQUET_EVAL_REPORT``, else the termination message); the exit code to use."""
        target = Path(path or os.environ.get("TOURNIQUET_EVAL_REPORT") or DEFAULT_REPORT)
        target.write_text(self.text())
        return self.exit_code
