"""A merge patch that turns one status into another removes what the new one dropped."""

from __future__ import annotations

import pytest

from tourniquet.domain.patches import merge_patch


def apply_merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386, as the API server applies it."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = apply_merge_patch(result[key], value)
        else:
            result[key] = value
    return result


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {"a": 1}),
        ({"containment": {"incidents": ["x"]}, "a": 1}, {"a": 1}, {"a": 1, "containment": None}),
        (
            {"bundle": {"revision": 2, "lastKnownGood": 1}},
            {"bundle": {"revision": 2}},
            {"bundle": {"revision": 2, "lastKnownGood": None}},
        ),
        ({"levers": [{"name": "drain"}]}, {"levers": []}, {"levers": []}),  # lists are replaced whole
        ({"a": {"b": 1}}, {"a": 3}, {"a": 3}),
        ({}, {"a": {"b": 1}}, {"a": {"b": 1}}),
    ],
)
def test_the_patch_turns_the_old_status_into_the_new_one(old: dict, new: dict, patch: dict) -> None:
    assert merge_patch(old, new) == patch
    assert apply_merge_patch(old, merge_patch(old, new)) == new
