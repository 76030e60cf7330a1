"""HTTP: the request entry point, routing to the verbs, tables for ``kubectl get``, and errors."""

from __future__ import annotations

import datetime
import json
import re
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import rendering

from kubemu.discovery import _Discovery
from kubemu.errors import ApiError, _bad_request, _endpoint_not_found, status_body
from kubemu.protobuf import decode_protobuf
from kubemu.resources import _Reply, _resource, parse_api_path

if TYPE_CHECKING:
    from kubemu.errors import JSON
    from kubemu.resources import ResourceSpec


_JSON_PATH_FILTER = re.compile(r"^\[\?\(@\.([\w.-]+)\s*==\s*[\"']([^\"']*)[\"']\)\]")


def _json_path(obj: Any, path: str) -> Any:
    """The subset of JSONPath printer columns use: .a.b, [0], [?(@.k=="v")]. None when absent."""
    current: Any = obj
    rest = path.strip()
    while rest and current is not None:
        if rest.startswith("."):
            match = re.match(r"^\.([\w-]+)", rest)
            if match is None:
                return None
            current = current.get(match.group(1)) if isinstance(current, dict) else None
            rest = rest[match.end() :]
        elif (found := _JSON_PATH_FILTER.match(rest)) is not None:
            key, wanted = found.groups()
            current = next((i for i in current or [] if isinstance(i, dict) and str(i.get(key)) == wanted), None)
            rest = rest[found.end() :]
        elif (index := re.match(r"^\[(\d+)\]", rest)) is not None:
            position = int(index.group(1))
            current = current[position] if isinstance(current, list) and position < len(current) else None
            rest = rest[index.end() :]
        else:
            return None
    return current


def _age(timestamp: str, now: datetime.datetime) -> str:
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    seconds = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@attrs.define(kw_only=True)
class _Http(_Discovery):
    """The HTTP entry point and the routing of requests."""

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """Serve one HTTP request (the aiohttp low-level handler protocol), as ``RawHandler`` does."""
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            if self.limit is not None and self._request_seq >= self.limit:
                raise kmock.KMockError("Too many requests have been served so far.")
            request = await self._parse_request(raw_request)
            self._requests.append(request)
            if self.request_log_limit is not None and len(self._requests) > self.request_log_limit:
                del self._requests[: len(self._requests) - self.request_log_limit // 2]
            try:
                return await self._handle(request)
            except rendering.StreamingError as e:
                raw_response = e.args[0]
                raise e.__cause__ or e from None
        except Exception as e:
            if not self._errors:
                raise
            self._errors[-1].append(e)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(e)
            await self._stream_error(e, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _parse_request(self, raw: aiohttp.web.BaseRequest) -> rendering.Request:
        body = await raw.read()
        text = body.decode("utf-8", errors="replace")
        data: Any = None
        if body.strip():
            try:
                data = json.loads(text)
            except ValueError:
                if "yaml" in (raw.content_type or ""):
                    try:
                        data = yaml.safe_load(text)
                    except yaml.YAMLError:
                        data = None
        path = parse_api_path(raw.path)
        resource = None
        action = None
        if path.group is not None:
            resource = _resource(path.group, path.version, path.plural)
            if raw.method == "GET":
                action = (
                    kmock.action.WATCH
                    if raw.query.get("watch") in ("true", "1")
                    else (kmock.action.FETCH if path.name else kmock.action.LIST)
                )
            elif raw.method == "POST" and not path.name:
                action = kmock.action.CREATE
            elif raw.method in ("PATCH", "PUT") and path.name:
                action = kmock.action.UPDATE
            elif raw.method == "DELETE":
                action = kmock.action.DELETE
        self._request_seq += 1
        return rendering.Request(
            id=self._request_seq - 1,
            raw_request=raw,
            url=raw.url,
            method=raw.method,
            params=dict(raw.query),
            headers=dict(raw.headers),
            cookies=dict(raw.cookies),
            body=body,
            text=text,
            data=data,
            action=action,
            resource=resource,
            namespace=path.namespace,
            name=path.name,
            subresource=path.subresource,
        )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        self._sync_index()
        response = await self._react(request, before_builtins=True)
        if response is not None:
            return response
        try:
            return await self._serve(request)
        except ApiError as e:
            if e.unknown_endpoint:
                response = await self._react(request, before_builtins=False)
                if response is not None:
                    return response
            return _Reply(e.code, e.status).render()

    async def _serve(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        path = raw.path if raw is not None else request.url.path
        method = str(request.method.value).upper()
        discovery = self._serve_discovery(path) if method == "GET" else None
        if discovery is not None:
            return discovery.render()
        parsed = parse_api_path(path)
        if parsed.group is None or parsed.version is None or parsed.plural is None:
            raise _endpoint_not_found()
        spec = self._spec(parsed.group, parsed.version, parsed.plural)
        if spec is None:
            raise _endpoint_not_found()
        if parsed.namespace is not None and not spec.namespaced:
            raise _endpoint_not_found()
        params = dict(request.params)
        sub = parsed.subresource or ""
        if sub and sub not in spec.subresources:
            raise _endpoint_not_found()
        name, namespace = parsed.name, parsed.namespace
        verb = self._verb(method, name, params)
        if spec.verbs and verb not in spec.verbs and not (verb == "get" and sub):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if name is not None and spec.namespaced and namespace is None:
            raise _endpoint_not_found()

        if verb == "watch":
            return await self._stream_watch(request, spec, namespace, name, params)
        reply: _Reply
        wants_table = "as=Table" in (request.headers.get("Accept") or "") and spec.resource in self._custom
        match verb:
            case "list":
                listed = self._list(spec, namespace, params)
                reply = _Reply(
                    200, self._as_table(spec, listed["items"], listed["metadata"]) if wants_table else listed
                )
            case "get":
                got = self._get(spec, namespace, name or "", sub)
                reply = _Reply(200, self._as_table(spec, [got], {}) if wants_table and not sub else got)
            case "create":
                if name is not None:
                    raise ApiError(
                        405,
                        "MethodNotAllowed",
                        "the server does not allow this method on the requested resource",
                    )
                if spec.namespaced and namespace is None:
                    raise _endpoint_not_found()
                opts = self._write_options(params, request)
                created = self._create(spec, namespace, self._body(request), opts)
                reply = _Reply(201, created, opts.warnings)
            case "update":
                opts = self._write_options(params, request)
                reply = _Reply(
                    200,
                    self._replace(spec, namespace, name or "", sub, self._body(request), opts),
                    opts.warnings,
                )
            case "patch":
                opts = self._write_options(params, request)
                content_type = (raw.content_type if raw is not None else "") or ""
                status, result = self._patch(
                    spec, namespace, name or "", sub, content_type, request.data, request.text, opts
                )
                reply = _Reply(status, result, opts.warnings)
            case "delete":
                body = request.data if isinstance(request.data, dict) else {}
                status, result = self._delete(spec, namespace, name or "", params, body)
                reply = _Reply(status, result)
            case "deletecollection":
                reply = _Reply(200, self._delete_collection(spec, namespace, params))
            case _:
                raise ApiError(
                    405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
                )
        return reply.render()

    @staticmethod
    def _verb(method: str, name: str | None, params: Mapping[str, str]) -> str:
        if method == "GET":
            if params.get("watch") in ("true", "1"):
                return "watch"
            return "get" if name else "list"
        if method == "POST":
            return "create"
        if method == "PUT" and name:
            return "update"
        if method == "PATCH" and name:
            return "patch"
        if method == "DELETE":
            return "delete" if name else "deletecollection"
        return method.lower()

    @staticmethod
    def _body(request: rendering.Request) -> Any:
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type == "application/vnd.kubernetes.protobuf":
            return decode_protobuf(request.body)
        if content_type == "application/cbor":
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - "
                "accepted media types include: application/json, "
                "application/yaml",
            )
        if request.data is None and request.body.strip():
            raise _bad_request(
                "the body of the request was in an unknown format - "
                "accepted media types include: application/json, application/yaml"
            )
        return request.data

    def _as_table(self, spec: ResourceSpec, items: list[JSON], list_meta: JSON) -> JSON:
        """A meta.k8s.io/v1 Table built from the CRD's additionalPrinterColumns, as `kubectl get` asks for."""
        columns = [
            {
                "name": "Name",
                "type": "string",
                "format": "name",
                "priority": 0,
                "description": "Name must be unique within a namespace.",
            }
        ]
        printer = list(self._custom[spec.resource].printer_columns) or [
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
        ]
        columns += [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in printer
        ]
        now = datetime.datetime.now(datetime.UTC)
        rows = []
        for obj in items:
            cells: list[Any] = [obj["metadata"]["name"]]
            for column in printer:
                value = _json_path(obj, column.get("jsonPath", ""))
                if column.get("type") == "date" and isinstance(value, str):
                    value = _age(value, now)
                elif isinstance(value, list):
                    value = ",".join(str(v) for v in value)
                cells.append(value)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj["metadata"],
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": dict(list_meta),
            "columnDefinitions": columns,
            "rows": rows,
        }

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, ApiError):
            return _Reply(exc.code, exc.status).render()
        body = status_body(
            500,
            f"{type(exc).__name__}: {exc}",
            details={"causes": [{"message": line} for line in traceback.format_exception(exc)[-3:]]},
        )
        return _Reply(500, body).render()
