"""Errors as the API server reports them: ``kind: Status`` bodies with their HTTP codes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_STATUS_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


JSON = dict[str, Any]


class ApiError(Exception):
    """An API failure rendered as a ``kind: Status`` body with its HTTP code."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        *,
        unknown_endpoint: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details) if details else None
        self.unknown_endpoint = unknown_endpoint

    @property
    def status(self) -> JSON:
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body

    def __repr__(self) -> str:
        return f"ApiError({self.code}, {self.reason!r}, {self.message!r})"


def status_body(
    code: int, message: str | None = None, reason: str | None = None, details: Mapping[str, Any] | None = None
) -> JSON:
    """A ``kind: Status`` failure body for any HTTP code (used by fault injection too)."""
    reason = reason or _STATUS_REASONS.get(code, "InternalError" if code >= 500 else "BadRequest")
    message = message or {
        409: "the object has been modified; please apply your changes to the latest version and try again",
        429: "too many requests, please try again later",
        500: 'an error on the server ("injected fault") has prevented the request from succeeding',
        503: "the server is currently unable to handle the request",
        504: "the server was unable to return a response in the time allotted, but may still be processing",
    }.get(code, reason)
    return ApiError(code, reason, message, details).status


def _not_found(qualified: str, name: str, details: Mapping[str, Any]) -> ApiError:
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', details)


def _endpoint_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {}, unknown_endpoint=True)


def _bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)
