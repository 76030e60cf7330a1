"""``metadata.managedFields`` for the emulator: who wrote which field, as a real API server records it.

A real server keeps one entry per (manager, operation, apiVersion, subresource). The manager is the
``fieldManager`` query parameter, or else the client's User-Agent up to its first ``/`` (``kubectl``,
``kopf``, ``Python-urllib``). A create gives its manager every field of the new object. An update
(PUT, or a JSON, merge or strategic merge patch) gives its manager the fields it changed and takes them
from everyone else. An entry left owning nothing is dropped. A write to ``/scale`` or ``/status`` is
recorded under that subresource, in the parent object's field paths (``kubectl scale`` owns
``f:spec.f:replicas`` with ``subresource: scale``). An apply owns exactly the fields of its
configuration.

The field paths are derived without the built-in schemas, so they approximate a real server's:
dictionaries are walked, lists named in the strategic-merge keys (containers, env, volumes, conditions,
...) are keyed ``k:{"name":...}``, ``finalizers`` is a set (``v:"..."``), and any other list is atomic.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Path = tuple[str, ...]
JSON = dict[str, Any]

# The metadata a manager can own (the server sets the rest).
OWNED_METADATA = ("labels", "annotations", "finalizers", "ownerReferences")
SET_LISTS = frozenset({"finalizers"})
ITEM = "."  # an associative list item itself


def manager_of(field_manager: str | None, user_agent: str | None) -> str:
    """The manager a real server records: the fieldManager parameter, else the User-Agent's product name."""
    if field_manager:
        return field_manager
    return (user_agent or "").split("/", 1)[0][:128]


def scoped(obj: Mapping[str, Any], subresource: str, status_is_subresource: bool) -> JSON:
    """The part of an object a write to `subresource` ('' for the object itself) can own."""
    if subresource == "status":
        return {"status": obj["status"]} if "status" in obj else {}
    meta = obj.get("metadata") or {}
    part: JSON = {key: value for key, value in obj.items() if key not in ("apiVersion", "kind", "metadata")}
    if status_is_subresource:
        part.pop("status", None)
    owned = {key: meta[key] for key in OWNED_METADATA if meta.get(key) not in (None, {}, [])}
    if owned:
        part["metadata"] = owned
    return part


def _item_key(field: str | None, item: Any, merge_keys: Mapping[str, str]) -> str | None:
    key = merge_keys.get(field or "")
    if not key or not isinstance(item, dict) or key not in item:
        return None
    return "k:" + json.dumps({key: item[key]}, separators=(",", ":"))


def _keyed(field: str | None, items: list[Any], merge_keys: Mapping[str, str]) -> dict[str, Any] | None:
    """An associative or set list as {path element: item}; None for an atomic list."""
    if field in SET_LISTS and all(isinstance(i, str) for i in items):
        return {"v:" + json.dumps(i): None for i in items}
    keyed = {}
    for item in items:
        element = _item_key(field, item, merge_keys)
        if element is None:
            return None
        keyed[element] = item
    return keyed if merge_keys.get(field or "") else None


def leaf_paths(value: Any, merge_keys: Mapping[str, str], prefix: Path = (), field: str | None = None) -> set[Path]:
    """Every field path of a value (a scalar, an empty map or an atomic list is one leaf)."""
    paths: set[Path] = set()
    _leaves(value, merge_keys, prefix, field, paths)
    return paths


def _leaves(value: Any, merge_keys: Mapping[str, str], prefix: Path, field: str | None, out: set[Path]) -> None:
    if isinstance(value, dict):
        if prefix and prefix[-1].startswith("k:"):
            out.add((*prefix, ITEM))
        elif not value and prefix:
            out.add(prefix)
        for key, sub in value.items():
            _leaves(sub, merge_keys, (*prefix, f"f:{key}"), key, out)
        return
    if isinstance(value, list):
        keyed = _keyed(field, value, merge_keys)
        if keyed is not None:
            if not keyed and prefix:
                out.add(prefix)
            for element, item in keyed.items():
                _item(item, merge_keys, (*prefix, element), out)
            return
    if prefix:
        out.add(prefix)


def _item(item: Any, merge_keys: Mapping[str, str], path: Path, out: set[Path]) -> None:
    if item is None:  # a member of a set list
        out.add(path)
    else:
        _leaves(item, merge_keys, path, None, out)


def diff(old: Any, new: Any, merge_keys: Mapping[str, str]) -> tuple[set[Path], set[Path]]:
    """(paths set or changed by going from `old` to `new`, paths that went away)."""
    changed: set[Path] = set()
    removed: set[Path] = set()
    _diff(old, new, merge_keys, (), None, changed, removed)
    return changed, removed


def _diff(
    old: Any,
    new: Any,
    merge_keys: Mapping[str, str],
    prefix: Path,
    field: str | None,
    changed: set[Path],
    removed: set[Path],
) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key, after in new.items():
            path = (*prefix, f"f:{key}")
            if key in old:
                _diff(old[key], after, merge_keys, path, key, changed, removed)
            else:
                _leaves(after, merge_keys, path, key, changed)
        for key, before in old.items():
            if key not in new:
                _leaves(before, merge_keys, (*prefix, f"f:{key}"), key, removed)
        return
    if isinstance(old, list) and isinstance(new, list):
        before_items, after_items = _keyed(field, old, merge_keys), _keyed(field, new, merge_keys)
        if before_items is not None and after_items is not None:
            for element, after in after_items.items():
                path = (*prefix, element)
                if element not in before_items:
                    _item(after, merge_keys, path, changed)
                elif after is not None:
                    _diff(before_items[element], after, merge_keys, path, None, changed, removed)
            for element, before in before_items.items():
                if element not in after_items:
                    _item(before, merge_keys, (*prefix, element), removed)
            return
    _leaves(old, merge_keys, prefix, field, removed)
    _leaves(new, merge_keys, prefix, field, changed)


def to_fields(paths: set[Path]) -> JSON:
    """Field paths as a FieldsV1 tree."""
    tree: JSON = {}
    for path in sorted(paths):
        node = tree
        for element in path:
            node = node.setdefault(element, {})
    return tree


def from_fields(tree: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for element, sub in tree.items():
        if isinstance(sub, dict) and sub:
            paths |= from_fields(sub, (*prefix, element))
        else:
            paths.add((*prefix, element))
    return paths


def _touches(tree: Mapping[str, Any], path: Path) -> bool:
    """Whether a FieldsV1 tree owns `path`, something under it, or something it is under."""
    node = tree
    for element in path:
        if not node:
            return True  # a leaf: it owns the whole of what is below
        if element not in node:
            return False
        node = node[element]
    return True


def _without(owned: set[Path], gone: set[Path]) -> set[Path]:
    """`owned` less every path in `gone` and everything under one."""
    if not gone:
        return owned
    return {p for p in owned if not any(p[: len(g)] == g for g in gone if len(g) <= len(p))}


def record_write(
    entries: list[JSON],
    *,
    manager: str,
    operation: str,
    api_version: str,
    subresource: str,
    changed: set[Path],
    removed: set[Path],
    now: str,
    applied: set[Path] | None = None,
) -> list[JSON]:
    """The managedFields after one write: the writer owns what it changed (an apply: what it applied), the
    others lose it; an entry owning nothing is dropped; sorted as a real server sorts them."""
    identity = (manager, operation, api_version, subresource)
    result: list[JSON] = []
    mine: set[Path] = set()
    gone = changed | removed
    for entry in entries:
        key = (
            entry.get("manager", ""),
            entry.get("operation", ""),
            entry.get("apiVersion", ""),
            entry.get("subresource", ""),
        )
        tree = entry.get("fieldsV1") or {}
        if key == identity:
            mine = _without(from_fields(tree), removed)
            continue
        if not any(_touches(tree, path) for path in gone):
            result.append(entry)
            continue
        owned = _without(from_fields(tree), gone)
        if owned:
            result.append({**entry, "fieldsV1": to_fields(owned)})
    if manager:
        mine = applied if applied is not None else mine | changed
        if mine:
            entry = {"manager": manager, "operation": operation, "apiVersion": api_version, "time": now}
            entry["fieldsType"] = "FieldsV1"
            entry["fieldsV1"] = to_fields(mine)
            if subresource:
                entry["subresource"] = subresource
            result.append(entry)
    result.sort(
        key=lambda e: (
            e.get("operation", ""),
            e.get("time", ""),
            e.get("manager", ""),
            e.get("apiVersion", ""),
            e.get("subresource", ""),
        )
    )
    return result
