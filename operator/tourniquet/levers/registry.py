"""The levers: one row per lever, with its phase, its flags in the control ConfigMap, its applies and its observe.

A pass applies the rows phase by phase (:func:`apply_phase`) and observes every row (:func:`observe`); the
reconcilers, the CLI and the status read this table and name no lever themselves.

- ``phase``: BEFORE_ROLLOUT levers are applied together, before the consumers are rolled to the active
  revision; AFTER_ROLLOUT levers after it (drain: it kills the pods and their memory, so it goes last, and it
  waits for the incident's evidence, see ``domain.containment.WAITS_FOR_EVIDENCE``).
- ``flags``: the lever's flags in the agent's control ConfigMap (planned from the containment); every lever's
  flags are written by one write (:func:`write_control`), shared by all the rows that have flags.
- ``apply``: what makes the lever's objects what the containment asks. An apply shared by several rows runs once
  per phase. There is no release function: a containment in which no incident holds the lever is its release
  (the flags go back, the policy is whole again, a drain restores what it recorded).
- ``observe``: the lever's state as the applies left it, without reading it again.

Adding a lever: its value in ``models.Lever`` (then ``make crds``), a domain module planning it from the
containment, a lever module applying and observing it, and one row here.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass

from tourniquet.domain import network
from tourniquet.domain.containment import Containment
from tourniquet.levers import control, drain, egress
from tourniquet.levers.common import Apply, LeverContext, LeverObservation, Observe
from tourniquet.models import Lever


class Phase(enum.IntEnum):
    BEFORE_ROLLOUT = 1  # applied together, before the consumers' rollout
    AFTER_ROLLOUT = 2  # applied after it (and after the evidence)


@dataclass(frozen=True)
class LeverRow:
    phase: Phase
    apply: tuple[Apply, ...]
    observe: Observe
    flags: Callable[[Containment], dict[str, str]] | None = None  # its flags in the control ConfigMap


def control_flags(containment: Containment) -> dict[str, str]:
    """Every lever's flags in the control ConfigMap, as the containment asks."""
    return {k: v for row in LEVERS.values() if row.flags is not None for k, v in row.flags(containment).items()}


async def write_control(ctx: LeverContext) -> None:
    """The control ConfigMap, every lever's flags at once: one write."""
    await control.apply_control(ctx, control_flags(ctx.containment))


LEVERS: dict[Lever, LeverRow] = {
    Lever.SHADOW: LeverRow(Phase.BEFORE_ROLLOUT, (write_control,), control.observe_shadow, network.shadow_flags),
    Lever.REVOKE_TOOLS: LeverRow(
        Phase.BEFORE_ROLLOUT, (write_control, egress.apply_policy), egress.observe_revocation, network.revocation_flags
    ),
    Lever.DRAIN: LeverRow(Phase.AFTER_ROLLOUT, (drain.apply_drain,), drain.observe_drain),
}

NAMES = tuple(lever.value for lever in LEVERS)  # as written in specs, the CLI and the status


# Each phase's applies, each once, in the rows' order.
APPLIES: dict[Phase, tuple[Apply, ...]] = {
    phase: tuple(dict.fromkeys(a for row in LEVERS.values() if row.phase == phase for a in row.apply))
    for phase in Phase
}


async def apply_phase(ctx: LeverContext, phase: Phase) -> None:
    """Apply every lever of `phase` (held or released) at once, each apply once."""
    applies = APPLIES[phase]
    if len(applies) == 1:  # no task to gather
        await applies[0](ctx)
    else:
        await asyncio.gather(*(apply(ctx) for apply in applies))


def observe(ctx: LeverContext) -> dict[Lever, LeverObservation]:
    """Every lever as the applies left it, with what it put back this pass."""
    seen = {}
    for lever, row in LEVERS.items():
        seen[lever] = row.observe(ctx)
        seen[lever].drift = list(ctx.drift.get(lever, ()))
    return seen
