"""Rate limits with slowapi: per API key (``X-API-Key``), else per client address; memory or Redis storage."""

from __future__ import annotations

import hashlib

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded

from plantdx.config import ServeConfig
from plantdx.serve.errors import error_body


def client_key(request: Request) -> str:
    """The API key (hashed: keys never reach the limiter's storage), else the peer address.

    The peer address is the socket's, or the one uvicorn derived from X-Forwarded-For when the request came
    through a proxy listed in ``serve.trusted_proxies``; a client cannot pick its own bucket with that header.
    """
    api_key = request.headers.get("x-api-key")
    if api_key:
        return "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:24]
    return "addr:" + (request.client.host if request.client else "unknown")


def create_limiter(cfg: ServeConfig) -> Limiter:
    storage = cfg.redis_url or "memory://"
    return Limiter(key_func=client_key, storage_uri=storage, headers_enabled=True, strategy="moving-window")


def rate_limit_exceeded(request: Request, exc: RateLimitExceeded) -> Response:
    response: Response = JSONResponse(
        error_body("rate_limited", f"rate limit exceeded: {exc.detail}; slow down and retry later"), status_code=429
    )
    limiter: Limiter = request.app.state.limiter
    response = limiter._inject_headers(response, request.state.view_rate_limit)
    response.headers.setdefault("Retry-After", "60")
    return response
