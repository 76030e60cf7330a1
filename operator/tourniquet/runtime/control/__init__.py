"""Following the agent's control flag: shadow mode and revoked tools, within seconds of the operator's change.

The operator owns one ConfigMap per agent, ``<agent>-control``, with two keys::

    mode:         "active" | "shadow"
    revokedTools: '["issue_refund"]'      # a JSON list of tool names

It is also mounted into the agent's pods at ``/etc/tourniquet/control`` (one file per key), but the
kubelet refreshes a mounted ConfigMap only about a minute after a change. So :class:`ControlFollower`
LISTs and then WATCHes the ConfigMap through the Kubernetes API in a background thread (a change
applies within seconds), resumes the watch from the last resourceVersion, relists on 410 Gone, and
reconnects with jittered backoff. Without API access (no kubeconfig or service account, 401/403, the
API unreachable) it polls the mounted files every few seconds until the API answers again.

Failing closed: a flag that cannot be read or understood (an unknown mode, revokedTools that is not a
JSON list of names, an unreadable file) puts the agent in shadow mode, and ``ControlState.error`` says
why. A stale mount never loosens what the API last said: when the follower falls back to the files
while it holds a state from the API, it keeps the stricter of the two until the mounted content
changes (the kubelet has caught up). A ConfigMap that does not exist means no flag is set: active.

The service account needs ``get``, ``list`` and ``watch`` on ``configmaps`` in the agent's namespace.

The flag itself (its states, what its data means, the mounted files) is :mod:`.flag`; following it through
the API is :mod:`.follower`, on the client of :mod:`.client`.
"""

from tourniquet.runtime.control.flag import (
    ACTIVE,
    CONTROL_MOUNT,
    MODE_KEY,
    MODES,
    REVOKED_KEY,
    SHADOW,
    ControlSource,
    ControlState,
    Source,
    StaticControl,
    parse_control,
    read_mount,
    read_mounted_state,
    stricter,
)
from tourniquet.runtime.control.follower import ControlFollower

__all__ = [
    "ACTIVE",
    "CONTROL_MOUNT",
    "MODES",
    "MODE_KEY",
    "REVOKED_KEY",
    "SHADOW",
    "ControlFollower",
    "ControlSource",
    "ControlState",
    "Source",
    "StaticControl",
    "parse_control",
    "read_mount",
    "read_mounted_state",
    "stricter",
]
