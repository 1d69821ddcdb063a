"""ASGI middleware: the request body size limit, the correlation id of each request, ingest
metrics, the dashboard's security headers.

The correlation id (``X-Correlation-ID``, or a new one) lives in a context variable for the
request's task only (``vdip.logs.correlation_id``), is echoed in the response, and is in every log
record written while the request is handled.
"""

import re
import secrets

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError, render_error
from schemas import ErrorDetail
from vdip import metrics
from vdip.logs import correlation_id

_VALID_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")


class CorrelationIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-correlation-id"), "")
        value = given if _VALID_ID.match(given) else secrets.token_hex(16)  # as a uuid4's hex, faster
        token = correlation_id.set(value)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["X-Correlation-ID"] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            correlation_id.reset(token)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"The request body is larger than {limit} bytes",
        [ErrorDetail(field="body", reason=f"larger than {limit} bytes")],
    )


class BodySizeLimitMiddleware:
    """413 as soon as the body is known to be too large: from Content-Length, before reading it,
    or while it streams in (chunked bodies), without reading the rest."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await render_error(_too_large(self.max_bytes))(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _too_large(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


REJECTED_BECAUSE = {
    400: "malformed",
    401: "unauthorized",
    403: "disabled_app",
    404: "unknown_app",
    409: "conflict",
    413: "too_large",
    422: "invalid",
    429: "rate_limited",
    503: "unavailable",
}


_ACCEPTED = metrics.INGEST_REQUESTS.labels("accepted", "")
_PARTIAL = metrics.INGEST_REQUESTS.labels("partial", "")


class IngestMetricsMiddleware:
    """Counts ingest requests by outcome, and refused ones by reason (events are counted by the
    routes, which know how many a request carried)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(("/api/ingest/", "/api/messages/")):
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status >= 400:
                    reason = REJECTED_BECAUSE.get(status, str(status))
                    metrics.INGEST_REQUESTS.labels("rejected", reason).inc()
                else:
                    (_PARTIAL if status == 207 else _ACCEPTED).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


# What the dashboard's pages may do: their own scripts, styles, images and API calls, nothing
# inline, nothing from elsewhere, never framed.
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


class DashboardHeadersMiddleware:
    """Every answer under ``/dashboard`` carries ``DASHBOARD_HEADERS``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/dashboard"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in DASHBOARD_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
