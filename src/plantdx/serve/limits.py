"""Rate limits: one budget per API key (``X-API-Key``), else per client address, kept with the ``limits`` library
in memory or in Redis (replicas share counts).

Checked once per request by the ``rate_limited`` dependency: one storage hit and one window read. (slowapi's
decorator, used before, spent about 1.7 ms of CPU per request on this, docs/benchmarks.md.)
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from limits import RateLimitItem, parse
from limits.storage import MemoryStorage, RedisStorage
from limits.strategies import MovingWindowRateLimiter

from plantdx.config import ServeConfig
from plantdx.serve.errors import ServiceError

SCOPE = "diagnosis"  # one budget for predict, batch and jobs
MAX_BACKOFF_S = 32.0

log = logging.getLogger("plantdx.serve.limits")


class RateLimitedError(ServiceError):
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


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float  # epoch seconds when the oldest hit of the window expires

    def headers(self) -> dict[str, str]:
        out = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            out["Retry-After"] = str(max(1, math.ceil(self.reset_at - time.time())))
        return out


class RateLimiter:
    """A moving window per client over the diagnosis routes.

    With Redis configured, counts are shared by every replica. If Redis fails, counting falls back to this
    process's memory (a WARNING), rather than failing predictions, and Redis is tried again after 1, 2, 4 ... 32 s;
    its return is logged. Redis calls time out in 0.5 s without retries: they run on the event loop.
    """

    def __init__(self, cfg: ServeConfig) -> None:
        self.item: RateLimitItem = parse(cfg.rate_limit)
        self.key_of = create_key_func(cfg)
        self.memory = MovingWindowRateLimiter(MemoryStorage())
        self.shared: MovingWindowRateLimiter | None = None
        if cfg.redis_url:
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            options: dict[str, Any] = {
                "socket_connect_timeout": 0.5,
                "socket_timeout": 0.5,
                "retry": Retry(NoBackoff(), 0),
            }
            self.shared = MovingWindowRateLimiter(RedisStorage(cfg.redis_url, wrap_exceptions=True, **options))
        self._backoff = 0.0  # 0: Redis is in use
        self._retry_at = 0.0

    def _strategy(self) -> MovingWindowRateLimiter:
        if self.shared is None or (self._backoff and time.monotonic() < self._retry_at):
            return self.memory
        return self.shared

    def _use(self, fn: Callable[[MovingWindowRateLimiter], Any]) -> Any:
        strategy = self._strategy()
        if strategy is self.memory:
            return fn(strategy)
        try:
            result = fn(strategy)
        except Exception as exc:
            self._backoff = min(MAX_BACKOFF_S, self._backoff * 2) if self._backoff else 1.0
            self._retry_at = time.monotonic() + self._backoff
            log.warning(
                "rate-limit storage (Redis) failed (%s): counting in this process's memory; next try in %.0f s",
                type(exc).__name__,
                self._backoff,
            )
            return fn(self.memory)
        if self._backoff:
            self._backoff = 0.0
            log.info("rate-limit storage recovered: counts are shared through Redis again")
        return result

    def hit(self, key: str, cost: int = 1) -> Verdict:
        """Take ``cost`` from ``key``'s budget if it has that much left; the window as it stands after."""

        def take(strategy: MovingWindowRateLimiter) -> Verdict:
            allowed = strategy.hit(self.item, key, SCOPE, cost=cost)
            stats = strategy.get_window_stats(self.item, key, SCOPE)
            return Verdict(allowed, self.item.amount, stats.remaining, stats.reset_time)

        verdict: Verdict = self._use(take)
        return verdict

    def check(self, request: Request, cost: int = 1) -> Verdict:
        return self.hit(self.key_of(request), cost)


async def rate_limited(request: Request, response: Response) -> None:
    """The dependency of the routes that diagnose: a photo costs one, or a 429 with ``Retry-After``."""
    limiter: RateLimiter = request.app.state.limiter
    verdict = limiter.check(request)
    if not verdict.allowed:
        raise RateLimitedError(
            f"rate limit exceeded: {limiter.item.amount} per {limiter.item.get_expiry()} s; slow down and retry later",
            headers=verdict.headers(),
        )
    response.headers.update(verdict.headers())


def charge(request: Request, photos: int) -> None:
    """A batch of k photos costs k against the rate limit: the route took one when the request came in, the rest
    are taken here, once the photos are counted, or the whole batch is refused with a 429 (nothing of it is
    diagnosed). Else a client would multiply its budget by the batch size."""
    if photos <= 1:
        return
    limiter: RateLimiter = request.app.state.limiter
    verdict = limiter.check(request, cost=photos - 1)
    if not verdict.allowed:
        raise RateLimitedError(
            f"rate limit exceeded: a batch of {photos} photos costs {photos} of the {limiter.item.amount} per "
            f"{limiter.item.get_expiry()} s budget; send fewer or retry later",
            headers=verdict.headers(),
        )
