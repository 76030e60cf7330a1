"""kubectl's protobuf bodies (``kubectl create configmap|secret|namespace``), decoded to JSON."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from kubemu.errors import ApiError, _bad_request

if TYPE_CHECKING:
    from kubemu.errors import JSON


def _pb_varint(data: bytes, index: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[index]
        index += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, index
        shift += 7


def _pb_fields(data: bytes) -> Iterator[tuple[int, Any]]:
    """Yield ``(field number, value)``: ints for varints, bytes for length-delimited fields."""
    index = 0
    while index < len(data):
        key, index = _pb_varint(data, index)
        number, wire = key >> 3, key & 7
        value: Any
        if wire == 0:
            value, index = _pb_varint(data, index)
        elif wire == 2:
            length, index = _pb_varint(data, index)
            value, index = data[index : index + length], index + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, index = data[index : index + size], index + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def _pb_map(entries: Iterable[bytes], *, binary: bool = False) -> dict[str, str]:
    result = {}
    for entry in entries:
        fields = dict(_pb_fields(entry))
        value = fields.get(2, b"")
        result[fields.get(1, b"").decode()] = base64.b64encode(value).decode() if binary else value.decode()
    return result


def _pb_object_meta(data: bytes) -> JSON:
    meta: JSON = {}
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    labels, annotations, finalizers, owners = [], [], [], []
    for number, value in _pb_fields(data):
        if number in strings and value:
            meta[strings[number]] = value.decode()
        elif number == 11:
            labels.append(value)
        elif number == 12:
            annotations.append(value)
        elif number == 13:
            owners.append(value)
        elif number == 14:
            finalizers.append(value.decode())
    if labels:
        meta["labels"] = _pb_map(labels)
    if annotations:
        meta["annotations"] = _pb_map(annotations)
    if finalizers:
        meta["finalizers"] = finalizers
    refs = []
    for owner in owners:
        fields = dict(_pb_fields(owner))
        ref = {
            key: fields[num].decode()
            for num, key in ((5, "apiVersion"), (1, "kind"), (3, "name"), (4, "uid"))
            if num in fields
        }
        ref.update(
            {key: bool(fields[num]) for num, key in ((6, "controller"), (7, "blockOwnerDeletion")) if num in fields}
        )
        refs.append(ref)
    if refs:
        meta["ownerReferences"] = refs
    return meta


def decode_protobuf(body: bytes) -> JSON:
    """
    Decode the Kubernetes protobuf envelope for the kinds kubectl creates imperatively.

    ``kubectl create configmap|secret|namespace`` send protobuf, not JSON. Only ConfigMap, Secret and
    Namespace are decoded; other kinds get a 415 that says to use ``kubectl apply -f`` (JSON).
    """
    if not body.startswith(b"k8s\x00"):
        raise _bad_request("the body of the request was in an unknown format - missing the protobuf envelope")
    envelope = dict(_pb_fields(body[4:]))
    type_meta = dict(_pb_fields(envelope.get(1, b"")))
    api_version, kind = type_meta.get(1, b"").decode(), type_meta.get(2, b"").decode()
    raw = envelope.get(2, b"")
    obj: JSON = {"apiVersion": api_version, "kind": kind}
    fields = list(_pb_fields(raw))
    for number, value in fields:
        if number == 1:
            obj["metadata"] = _pb_object_meta(value)
    match api_version, kind:
        case "v1", "ConfigMap":
            data = [v for n, v in fields if n == 2]
            binary = [v for n, v in fields if n == 3]
            if data:
                obj["data"] = _pb_map(data)
            if binary:
                obj["binaryData"] = _pb_map(binary, binary=True)
            for number, value in fields:
                if number == 4:
                    obj["immutable"] = bool(value)
        case "v1", "Secret":
            data = [v for n, v in fields if n == 2]
            if data:
                obj["data"] = _pb_map(data, binary=True)
            for number, value in fields:
                if number == 3 and value:
                    obj["type"] = value.decode()
            string_data = [v for n, v in fields if n == 4]
            if string_data:
                obj["stringData"] = _pb_map(string_data)
        case "v1", "Namespace":
            finalizers = [f.decode() for n, v in fields if n == 2 for m, f in _pb_fields(v) if m == 1]
            if finalizers:
                obj["spec"] = {"finalizers": finalizers}
        case _:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the emulator decodes protobuf only for ConfigMap, Secret "
                f"and Namespace, not {kind}: use `kubectl apply -f` (JSON)",
            )
    return obj
