"""The patch flavours of the API: JSON merge patch, JSON patch and (an approximation of) strategic merge patch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonpatch
import jsonpointer

from kubemu.errors import ApiError, _bad_request

# The patch merge keys of the built-in lists that strategic merge patch merges item by item.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "conditions": "type",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "topologySpreadConstraints": "topologyKey",
    "secrets": "name",
    "ports": "",  # '' = decided per list
}


MERGE_PRIMITIVE_LISTS = frozenset({"finalizers"})


def _clone(value: Any) -> Any:
    """A deep copy of JSON data (faster than copy.deepcopy for plain dicts/lists)."""
    if isinstance(value, dict):
        return {key: _clone(sub) for key, sub in value.items()}
    if isinstance(value, list | tuple):
        return [_clone(sub) for sub in value]
    return value


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 JSON merge patch; returns a new value (the target is not modified)."""
    if not isinstance(patch, Mapping):
        return _clone(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch; raise :class:`ApiError` 422 when an op (e.g. ``test``) fails."""
    if not isinstance(operations, list):
        raise _bad_request("the body of the request was in an unknown format - JSON patch must be an array")
    try:
        return jsonpatch.apply_patch(_clone(target), operations, in_place=True)
    except jsonpatch.JsonPatchTestFailed as e:
        raise ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {e}") from e
    except (
        jsonpatch.JsonPatchException,
        jsonpointer.JsonPointerException,
        KeyError,
        IndexError,
        TypeError,
    ) as e:
        raise ApiError(
            422,
            "Invalid",
            f"the server rejected our request due to an error in our request: jsonpatch operation failed: {e}",
        ) from e


def _merge_key(field: str, *lists: Any) -> str | None:
    key = MERGE_KEYS.get(field)
    if key is None:
        return None
    if key == "":  # container ports merge on containerPort, service ports on port
        items = [item for items in lists if isinstance(items, list) for item in items if isinstance(item, Mapping)]
        return "containerPort" if any("containerPort" in item for item in items) else "port"
    return key


def _strategic_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    if field in MERGE_PRIMITIVE_LISTS:
        result = list(current) if isinstance(current, list) else []
        result.extend(item for item in patch if item not in result)
        return _clone(result)
    key = _merge_key(field, current, patch)
    if key is None or not all(isinstance(item, Mapping) for item in patch):
        return _clone(patch)
    if any(item.get("$patch") == "replace" for item in patch):
        return [_strip_directives(item) for item in patch if item.get("$patch") != "replace"]
    result = [_clone(item) for item in current] if isinstance(current, list) else []
    for item in patch:
        index = next(
            (i for i, old in enumerate(result) if isinstance(old, Mapping) and old.get(key) == item.get(key)),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append(_strip_directives(item))
        else:
            result[index] = strategic_merge_patch(result[index], item)
    return result


def _strip_directives(item: Mapping[str, Any]) -> Any:
    return strategic_merge_patch({}, item)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """
    Apply a strategic merge patch, approximately.

    Maps merge recursively (``null`` deletes a key). Lists in :data:`MERGE_KEYS` merge item by item
    on their patch merge key (``containers`` by ``name``, ``volumeMounts`` by ``mountPath``,
    ``conditions`` by ``type``, container ``ports`` by ``containerPort``, ...); ``finalizers`` merge as
    a set; every other list is replaced. Directives: ``$patch: replace|delete`` (on maps and list
    items), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>``; ``$setElementOrder/<field>`` is
    accepted and ignored.
    """
    if not isinstance(patch, Mapping):
        return _clone(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {key: _clone(value) for key, value in patch.items() if key != "$patch"}
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [item for item in result[field] if item not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping):
            if value.get("$patch") == "delete":
                result.pop(key, None)
            else:
                result[key] = strategic_merge_patch(result.get(key), value)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, result.get(key), value)
        else:
            result[key] = value
    if isinstance(patch.get("$retainKeys"), list):
        result = {key: value for key, value in result.items() if key in patch["$retainKeys"]}
    return result
