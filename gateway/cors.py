"""CORS on the ingest routes (the Fetch standard's CORS protocol), per application.

Only ``POST /api/ingest/{app_id}``, ``.../batch``, ``.../beacon`` and ``/api/messages/{app_id}``
answer cross-origin, and only to the origins the application allows (``allowed_origins``, set
with ``PUT /api/applications/{app_id}/allowed-origins`` or ``vdip app origins``):

- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from an allowed origin is
  answered 204 with the origin echoed in ``Access-Control-Allow-Origin``, the method and request
  headers ingest reads, and ``Access-Control-Max-Age``; from any other origin (or for an unknown
  application) 403 without CORS headers, so the browser sends nothing;
- the answer to a request from an allowed origin carries ``Access-Control-Allow-Origin`` and
  exposes ``Retry-After`` and ``X-Correlation-ID``; a request from another origin is refused 403
  before it is read (so that a "simple" request, which a browser sends without a preflight, is
  not ingested either);
- every answer to a cross-origin ingest request has ``Vary: Origin``.

Requests without an ``Origin`` header (servers, curl) and same-origin ones are not affected.
No credentials (cookies) are allowed: a browser page sends its key in ``X-API-Key``, and that
key should have the ``ingest`` scope only, since anybody can read it in the page.
"""

import re

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.deps import ApplicationCache
from gateway.errors import ApiError, render_error
from schemas import ErrorDetail
from vdip.errors import DatabaseUnavailable
from vdip.origins import normalize_origin

_INGEST = re.compile(r"^/api/(?:ingest/(?P<app>[^/]+)(?:/batch|/beacon)?|messages/(?P<legacy>[^/]+))$")
ALLOW_METHODS = "POST"
ALLOW_HEADERS = "Authorization, Content-Type, Idempotency-Key, X-API-Key, X-Correlation-ID"
EXPOSE_HEADERS = "Retry-After, X-Correlation-ID"
MAX_AGE_S = 600


def _refused(origin: str, app_id: str) -> ApiError:
    return ApiError(
        403,
        f"Origin {origin} may not send events of application '{app_id}'",
        [ErrorDetail(field="header.Origin", reason="not an allowed origin of the application")],
        {"Vary": "Origin"},
    )


class IngestCorsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _INGEST.match(scope["path"]) if scope["type"] == "http" else None
        headers = Headers(scope=scope) if found is not None else None
        given = headers.get("origin") if headers is not None else None
        if headers is None or found is None or given is None or self._same_origin(scope, headers, given):
            await self.app(scope, receive, send)
            return
        app_id = found["app"] or found["legacy"]
        origin = normalize_origin(given)
        try:
            allowed = origin is not None and await self._allows(scope, app_id, origin)
        except DatabaseUnavailable as exc:
            error = ApiError(
                503,
                "PostgreSQL is unavailable; retry later",
                [ErrorDetail(field="postgres", reason=str(exc))],
            )
            await render_error(error)(scope, receive, send)
            return
        if not allowed or origin is None:
            await render_error(_refused(given, app_id))(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            preflight = {
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(MAX_AGE_S),
                "Vary": "Origin",
            }
            await Response(status_code=204, headers=preflight)(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer = MutableHeaders(scope=message)
                answer["Access-Control-Allow-Origin"] = origin
                answer["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
                answer.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _same_origin(scope: Scope, headers: Headers, origin: str) -> bool:
        host = headers.get("host")
        return host is not None and origin.lower() == f"{scope.get('scheme', 'http')}://{host}".lower()

    @staticmethod
    async def _allows(scope: Scope, app_id: str, origin: str) -> bool:
        applications: ApplicationCache = scope["app"].state.applications
        application = await applications.get(app_id)
        return application is not None and origin in application.allowed_origins
