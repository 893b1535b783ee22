# syntax=docker/dockerfile:1.7
# The MLflow tracking server of the compose stack: the same MLflow as the train extra, plus the PostgreSQL driver
# (psycopg 3, the serve extra's pin) that the official image lacks.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN pip install mlflow==3.17.2 "psycopg[binary]==3.3.9" \
 && groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid mlflow --home-dir /mlflow --create-home --shell /usr/sbin/nologin mlflow \
 && install -d -o 10001 -g 10001 /mlartifacts
WORKDIR /mlflow
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]
