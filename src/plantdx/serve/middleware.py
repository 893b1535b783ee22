"""One pure-ASGI middleware for what every request needs: an id, a size limit, metrics, one JSON log line, and
security headers. Pure ASGI, not ``BaseHTTPMiddleware``: it adds no task per request."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plantdx.serve.errors import error_body
from plantdx.serve.metrics import Metrics

access_log = logging.getLogger("plantdx.access")
error_log = logging.getLogger("plantdx.serve")
# A client's own X-Request-ID, echoed and logged for correlation; up to 64 safe characters, or it is dropped.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
ADMITTED = frozenset({"/v1/predict", "/v1/predict/batch", "/v1/jobs"})  # POSTs that read an upload: admission control

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"permissions-policy", b"camera=(self), geolocation=(), microphone=()"),
]
# 'wasm-unsafe-eval': compiling onnxruntime-web's WebAssembly (offline diagnosis); still no eval of JavaScript.
PAGE_CSP = (
    b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self' 'wasm-unsafe-eval'; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra fields given as ``extra={"fields": {...}}`` are merged in."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(getattr(record, "fields", {}))
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    for name in ("plantdx", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        max_body_bytes: int,
        max_in_flight: int | None = None,
        body_limits: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.body_limits = body_limits or {}  # by path; others get max_body (a batch of base64 images)
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # admitted uploads not yet answered (one event loop: no lock needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        # The request id keys the prediction log and /v1/feedback, so the service makes it: a client reusing its
        # own id for another photo would otherwise attach its label to the first one. The client's id is echoed
        # in X-Request-ID and logged as client_request_id.
        request_id = uuid.uuid4().hex
        client_id = given if _SAFE_ID.match(given) else None
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        if client_id is not None:
            state["client_request_id"] = client_id
        echoed = client_id or request_id
        started = time.perf_counter()
        status = 500
        self.metrics.active.inc()

        declared = headers.get(b"content-length")
        max_body = self.body_limits.get(scope.get("path", ""), self.max_body)
        if declared is not None and declared.isdigit() and int(declared) > max_body:
            status = 413
            await self._reject(send, echoed, 413, "too_large", f"the request body exceeds {max_body} bytes")
            self._finish(scope, request_id, status, started)
            return

        limit = self.max_in_flight
        admitted = limit is not None and scope["method"] == "POST" and scope["path"] in ADMITTED
        if admitted and limit is not None and self.in_flight >= limit:
            # Refuse before the upload is read: under overload the work piles up in front of the inference queue
            # (reading and parsing uploads), where its bound and deadline cannot see it.
            status = 503
            self.metrics.shed.labels(reason="in_flight").inc()
            message = f"{self.in_flight} requests are being served; retry shortly"
            await self._reject(send, echoed, 503, "overloaded", message, [(b"retry-after", b"1")])
            self._finish(scope, request_id, status, started)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_body:  # chunked uploads have no Content-Length to check up front
                    raise HTTPException(413, f"the request body exceeds {max_body} bytes")
            return message

        responded = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, responded
            if message["type"] == "http.response.start":
                responded = True
                status = message["status"]
                extra = [(b"x-request-id", echoed.encode()), *SECURITY_HEADERS]
                if scope.get("path") in ("/", "/index.html"):
                    extra.append((b"content-security-policy", PAGE_CSP))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        if admitted:
            self.in_flight += 1
        try:
            await self.app(scope, limited_receive, send_wrapper)
        except Exception as exc:
            # Answered here rather than by Starlette's outermost handler, so the 500 carries the request id and the
            # security headers, and its log line names the request an operator will be asked about.
            if responded:
                raise
            status = 500
            named = request_id + (f" (client id {client_id})" if client_id else "")
            error_log.exception(f"unhandled error ({type(exc).__name__}) in request {named}")
            await self._reject(send, echoed, 500, "internal_error", "the service failed; the error is logged")
        finally:
            if admitted:
                self.in_flight -= 1
            self._finish(scope, request_id, status, started)

    async def _reject(
        self,
        send: Send,
        request_id: str,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode()),
                    *(headers or []),
                    *SECURITY_HEADERS,
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    def _finish(self, scope: Scope, request_id: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        # a request refused before routing (admission control) still counts under its route
        known = scope["path"] in ADMITTED or scope["path"] in self.body_limits
        path = getattr(route, "path", None) or (scope["path"] if known else "unmatched")
        self.metrics.active.dec()
        self.metrics.requests.labels(route=path, method=scope["method"], status=str(status)).inc()
        self.metrics.latency.labels(route=path).observe(elapsed)
        if path in ("/metrics", "/healthz", "/readyz"):
            return  # probes and scrapes would drown the access log
        state = scope.get("state", {})
        fields = {
            "request_id": request_id,
            "method": scope["method"],
            "route": path,
            "status": status,
            "latency_ms": round(elapsed * 1000, 2),
        }
        for key in ("client_request_id", "prediction", "confidence", "model_version", "abstained", "job_id"):
            if key in state:
                fields[key] = state[key]
        access_log.info("request", extra={"fields": fields})
