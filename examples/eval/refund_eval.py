"""The refund agent's eval command for the redeploy gate (a demo: the "agent" here is a deterministic replay).

Run by the evaluation Job that `spec.evaluation` describes (README: the redeploy gate), with the
candidate bundle and the regression cases mounted. For each case it replays the inputs of the implicated
actions (the tool calls the agent made during the incident, from the decision trace) against the candidate
bundle and checks the expected behaviour:

* `expected.maxCalls`: `[{tool, perArgument, count}]` -- at most `count` calls of `tool` per value of that
  argument (the duplicate-refund case: each order refunded at most once, however often its ticket is retried);
* `expected.forbiddenTools`: tools the agent must not call at all for these inputs.

The replay's one behaviour that depends on the bundle: a tool whose schema requires `idempotency_key` is
called with a key for what it acts on (its primary subject, the order; else its task id), so a repeated
request for one order repeats the same action, which the runtime's ledger answers from the first call instead
of acting again. A real eval would run
the agent (its model, prompt and tools) on the recorded inputs; the report and the exit code are the same.

    TOURNIQUET_BUNDLE=bundle.json TOURNIQUET_EVAL_CASES=cases.yaml TOURNIQUET_EVAL_REPORT=report.json \
        python examples/eval/refund_eval.py
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tourniquet.runtime.evaluation import Results, load_bundle, load_cases


def replay(bundle: dict[str, Any], case: dict[str, Any]) -> tuple[bool, str]:
    tools = {t["name"]: t for t in bundle.get("tools") or []}
    calls: list[tuple[str, dict[str, Any], str]] = []  # (tool, arguments, action key)
    for index, step in enumerate(case.get("inputs") or []):
        tool, arguments = step.get("tool"), step.get("arguments") or {}
        if tool not in tools:
            continue  # the candidate has no such tool: the agent cannot call it
        required = (tools[tool].get("schema") or {}).get("required") or []
        keyed = "idempotency_key" in required
        # The action a repeated call repeats: what it acts on (the ledger's primary subject: the order a refund is
        # for; a customer asking twice is two tickets for one order), else its task id.
        task = (step.get("subjects") or [None])[0] or step.get("task")
        key = f"{tool}/{task}" if keyed and task else f"{tool}/#{index}"
        calls.append((tool, arguments, key))
    distinct = {key: (tool, arguments) for tool, arguments, key in calls}  # the ledger: one action per key
    expected = case.get("expected") or {}
    for tool in expected.get("forbiddenTools") or []:
        if any(t == tool for t, _ in distinct.values()):
            return False, f"called {tool}, which these inputs must never lead to"
    for rule in expected.get("maxCalls") or []:
        per = rule.get("perArgument")
        counts = Counter(str(a.get(per)) for t, a in distinct.values() if t == rule.get("tool"))
        for value, count in sorted(counts.items()):
            if count > int(rule.get("count", 1)):
                return False, f"{rule['tool']} called {count} times for {per}={value} (at most {rule.get('count', 1)})"
    return True, ""


def main() -> int:
    bundle, results = load_bundle(), Results()
    for case in load_cases():
        ok, why = replay(bundle, case)
        results.record(str(case.get("name")), ok, why)
        print(f"{case.get('name')}: {'passed' if ok else 'FAILED: ' + why}")
    return results.write()


if __name__ == "__main__":
    raise SystemExit(main())
