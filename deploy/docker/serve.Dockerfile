# syntax=docker/dockerfile:1.7
# The diagnosis service: the plantdx wheel with the serve extra only (no torch, no Evidently), as a non-root user.
# Build from the repository root:  docker build -f deploy/docker/serve.Dockerfile -t plantdx-serve .
# The same image runs `plantdx worker` (Celery on Redis): override the command. The drift checks that run beside
# the service (`plantdx monitor`) need the monitor extra:
#   docker build -f deploy/docker/serve.Dockerfile --build-arg EXTRAS=serve,monitor -t plantdx-monitor .

# python:3.11.14-slim-bookworm, pinned by digest (the tag is rebuilt; the digest is not).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# The page's browser runtime (onnxruntime-web), vendored from package-lock.json as `make web` does on a checkout:
# Debian's Node.js in the same pinned base, so no other image needs trusting.
FROM ${PYTHON_IMAGE} AS web
RUN apt-get update \
 && apt-get install -y --no-install-recommends nodejs=18.* npm=9.* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /web
COPY package.json package-lock.json ./
COPY scripts/build_web.mjs ./scripts/
RUN mkdir -p src/plantdx/serve/static \
 && npm ci --ignore-scripts --no-audit --no-fund \
 && node scripts/build_web.mjs

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=serve
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependency layer: the pinned runtime dependencies and those of the EXTRAS, read from pyproject.toml alone, so a
# source change does not reinstall them (an extra's own "plantdx[...]" entries are its other extras, listed too).
COPY pyproject.toml ./
RUN python -c "import os, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + [d for e in os.environ['EXTRAS'].split(',') for d in extras[e] \
if not d.startswith('plantdx[')]))" > requirements.txt \
 && pip install -r requirements.txt

# Source layer: build the wheel (what `python -m build --wheel` makes) and install it without touching the deps.
COPY README.md ./
COPY src ./src
COPY --from=web /web/src/plantdx/serve/static/vendor ./src/plantdx/serve/static/vendor
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --no-deps /wheels/plantdx-*.whl \
 && python -c "import importlib.util as u, sys; sys.exit(bool(u.find_spec('torch')))"

FROM ${PYTHON_IMAGE}
ARG UID=10001
RUN groupadd --system --gid ${UID} plantdx \
 && useradd --system --uid ${UID} --gid plantdx --home-dir /var/lib/plantdx --create-home --shell /usr/sbin/nologin plantdx
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    HOME=/var/lib/plantdx \
    PLANTDX_SERVE__HOST=0.0.0.0 \
    PLANTDX_SERVE__PORT=8000 \
    PLANTDX_MONITOR__LOG_URL=sqlite:////var/lib/plantdx/predictions.db \
    PLANTDX_MONITOR__REPORT_DIR=/var/lib/plantdx/monitoring
WORKDIR /var/lib/plantdx
# The prediction log and drift reports live here; mount a volume (or point the log at PostgreSQL) to keep them.
VOLUME ["/var/lib/plantdx"]
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PLANTDX_SERVE__PORT', '8000') + '/healthz', timeout=4)"]
# uvicorn drains on SIGTERM for PLANTDX_SERVE__DRAIN_TIMEOUT_S, then exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["plantdx"]
CMD ["serve"]
