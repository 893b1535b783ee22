"""Rate limits with slowapi: per API key (``X-API-Key``), else per client address; memory or Redis storage."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from limits import parse
from slowapi import Limiter
from slowapi.errors import RateLimitExceeded

from plantdx.config import ServeConfig
from plantdx.serve.errors import ServiceError, error_body

SCOPE = "diagnosis"  # one budget for predict, batch and jobs


class BatchOverLimitError(ServiceError):
    status_code = 429
    code = "rate_limited"
    headers = {"Retry-After": "60"}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def create_key_func(cfg: ServeConfig) -> Callable[[Request], str]:
    """A configured API key (``X-API-Key``) gets its own budget; anything else is limited by peer address.

    Only keys listed in ``serve.api_keys`` count, or a client would buy a fresh budget with every made-up key;
    keys are hashed, so they never reach the limiter's storage. The peer address is the socket's, or the one
    uvicorn derived from X-Forwarded-For for a proxy listed in ``serve.trusted_proxies``.
    """
    known = {_digest(k.get_secret_value()) for k in cfg.api_keys}

    def client_key(request: Request) -> str:
        given = request.headers.get("x-api-key")
        if given and (digest := _digest(given)) in known:
            return "key:" + digest
        return "addr:" + (request.client.host if request.client else "unknown")

    return client_key


def create_limiter(cfg: ServeConfig) -> Limiter:
    """Redis storage when configured (replicas share counts); if Redis fails, limits fall back to memory rather
    than failing predictions.

    The fallback is per process (each replica counts on its own) and slowapi logs it as a WARNING; it retries
    Redis with back-off (1, 2, 4 ... 32 s) and logs "Rate limit storage recovered" when counts are shared again.
    """
    options: dict[str, Any] = {}
    if cfg.redis_url:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # slowapi checks limits synchronously on the event loop: a Redis that hangs (rather than refuses) would
        # stall every request for as long as redis-py waits and retries (no timeout, 10 retries by default).
        options = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, "retry": Retry(NoBackoff(), 0)}
    return Limiter(
        key_func=create_key_func(cfg),
        storage_uri=cfg.redis_url or "memory://",
        storage_options=options,
        headers_enabled=True,
        strategy="moving-window",
        in_memory_fallback_enabled=cfg.redis_url is not None,
        swallow_errors=True,
    )


def rate_limit_exceeded(request: Request, exc: RateLimitExceeded) -> Response:
    response: Response = JSONResponse(
        error_body("rate_limited", f"rate limit exceeded: {exc.detail}; slow down and retry later"), status_code=429
    )
    limiter: Limiter = request.app.state.limiter
    response = limiter._inject_headers(response, request.state.view_rate_limit)
    response.headers.setdefault("Retry-After", "60")
    return response


def charge(request: Request, photos: int) -> None:
    """A batch of k photos costs k against the rate limit: the route's limit took one when the request came in,
    the rest are taken here, once the photos are counted, or the whole batch is refused with a 429 (nothing of it
    is diagnosed). Else a client would multiply its budget by the batch size."""
    if photos <= 1:
        return
    limiter: Limiter = request.app.state.limiter
    rate: str = request.app.state.settings.serve.rate_limit
    key = limiter._key_func(request)
    if not limiter.limiter.hit(parse(rate), key, SCOPE, cost=photos - 1):
        raise BatchOverLimitError(
            f"rate limit exceeded: a batch of {photos} photos costs {photos} of the {rate} budget; send fewer or "
            "retry later"
        )
