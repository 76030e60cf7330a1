"""The agent-side runtime is light: importing it (guard, ledger, traces, the compensation worker) loads none of the
operator's models and not pydantic, in the agent's own process."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_runtime_loads_neither_the_operators_models_nor_pydantic() -> None:
    probe = (
        "import json, sys\n"
        "import tourniquet.runtime, tourniquet.runtime.trace, tourniquet.runtime.compensate.command\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(('tourniquet.', 'pydantic')))))\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = json.loads(run.stdout)
    operator_side = [m for m in loaded if not m.startswith(("tourniquet.runtime", "tourniquet.shared"))]
    assert operator_side == ["tourniquet.domain", "tourniquet.domain.names"]
