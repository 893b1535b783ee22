# syntax=docker/dockerfile:1.7
# Training: the plantdx wheel with the train extra (PyTorch, Lightning, MLflow), CPU wheels by default.
# Build from the repository root:
#   docker build -f deploy/docker/train.Dockerfile -t plantdx-train .                              # CPU
#   docker build -f deploy/docker/train.Dockerfile --build-arg TORCH_VARIANT=cu128 -t plantdx-train:cuda .  # CUDA
# TORCH_VARIANT names a PyTorch wheel index (cpu, cu126, cu128, ...); the CUDA runtime comes inside those wheels,
# so the base image stays the same and the node only needs the NVIDIA driver and container toolkit.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependency layer: torch and torchvision from the chosen PyTorch index first, then the rest of the train extra
# (pip keeps the torch it already has because the pins match).
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
deps = p['dependencies'] + p['optional-dependencies']['train'] + p['optional-dependencies']['pretrained']; \
open('torch.txt', 'w').write('\n'.join(d for d in deps if d.startswith(('torch==', 'torchvision==')))); \
open('requirements.txt', 'w').write('\n'.join(deps))" \
 && pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" -r torch.txt \
 && pip install -r requirements.txt

# Source layer.
COPY README.md ./
COPY src ./src
RUN pip wheel --no-deps --wheel-dir /wheels . && pip install --no-deps /wheels/plantdx-*.whl

FROM ${PYTHON_IMAGE}
ARG UID=10001
# git: the training run records the commit it came from (empty outside a checkout, which is fine).
RUN apt-get update \
 && apt-get install -y --no-install-recommends git=1:2.39.* \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid ${UID} plantdx \
 && useradd --system --uid ${UID} --gid plantdx --home-dir /workspace --create-home --shell /usr/sbin/nologin plantdx
COPY --from=build /opt/venv /opt/venv
COPY --chown=10001:10001 configs /workspace/configs
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DO_NOT_TRACK=1 \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false \
    HOME=/workspace \
    PLANTDX_DATA=/data
WORKDIR /workspace
USER 10001:10001
# No HTTP port to probe: a training container is a batch job whose exit code is its health.
HEALTHCHECK NONE
ENTRYPOINT ["plantdx"]
CMD ["train", "-c", "configs/default.yaml"]
