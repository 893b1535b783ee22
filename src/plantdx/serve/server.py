"""``run_server``: the service under uvicorn, as ``plantdx serve`` and the container start it."""

from __future__ import annotations

import signal

from plantdx.config import Settings


def run_server(settings: Settings) -> None:
    """One uvicorn worker on ``serve.host:serve.port`` (scale with processes or pods); returns after a drained stop."""
    import uvicorn

    from plantdx.serve.app import create_app

    cfg = settings.serve
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=cfg.host,
            port=cfg.port,
            workers=1,
            # asyncio, not uvloop: under 3x overload uvloop left new connections waiting 2-5 s for their first
            # byte (even a fast 503) while it served the open ones; the asyncio loop answered them in ~0.1 s, at
            # the same throughput (docs/reliability.md).
            loop="asyncio",
            log_config=None,
            access_log=False,  # plantdx logs one JSON line per request itself
            proxy_headers=bool(cfg.trusted_proxies),
            forwarded_allow_ips=",".join(cfg.trusted_proxies) or None,
            timeout_graceful_shutdown=int(cfg.drain_timeout_s),
        )
    )
    # uvicorn drains on SIGTERM, then re-raises the signal so the process would die by it; a drained service has
    # shut down as asked, so it exits 0 (what Kubernetes and systemd read as a clean stop).
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
