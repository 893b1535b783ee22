# plantdx: `make help` lists the targets.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# Reinstall only when the dependency list changes: `make install` is quick when nothing did.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# The page's browser runtime (onnxruntime-web), vendored from package-lock.json: rebuilt when the lock file changes.
VENDOR := src/plantdx/serve/static/vendor
WEB_STAMP := $(VENDOR)/.built-$(shell cat package-lock.json scripts/build_web.mjs | sha256sum | cut -c1-12)
# Flower (plantdx federate) in an environment of its own: flwr 1.42 pins typer<0.21, rich<15, fastapi<0.139 and
# uvicorn<0.50, older than the service's. A .pth file lets it see .venv's packages (torch, Lightning, plantdx) after
# its own, so neither environment's pins bend and torch is installed once.
FLWR_VENV ?= .venv-flwr
FLWR_STAMP := $(FLWR_VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
PURELIB := import sysconfig; print(sysconfig.get_paths()["purelib"])

export DO_NOT_TRACK = 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR = false

.DEFAULT_GOAL := help
.PHONY: help install web flower-env federate serve train smoke test lint format default-model bench bench-serve bench-soak install-size bench-edge reliability

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) $(WEB_STAMP) $(FLWR_STAMP) ## create .venv (train, serve, monitor, pretrained, edge, dev extras) and .venv-flwr (Flower); vendor the page's runtime

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[train,serve,monitor,pretrained,edge,dev]"
	rm -f $(VENV)/.installed-* && touch $@

web: $(WEB_STAMP) ## vendor onnxruntime-web into the page (npm ci from package-lock.json; never a CDN)

$(WEB_STAMP): package.json package-lock.json scripts/build_web.mjs
	npm ci --ignore-scripts --no-audit --no-fund --prefer-offline
	node scripts/build_web.mjs
	rm -f $(VENDOR)/.built-* && touch $@

flower-env: $(FLWR_STAMP) ## create .venv-flwr: flwr and its own pins, seeing .venv's torch and plantdx after them

$(FLWR_STAMP): pyproject.toml $(STAMP)
	test -x $(FLWR_VENV)/bin/python || $(BIN)/python -m venv $(FLWR_VENV)
	$(FLWR_VENV)/bin/python -m pip install -q --upgrade pip
	$(FLWR_VENV)/bin/python -m pip install -q --group federated
	echo "import site; site.addsitedir('$$($(BIN)/python -c '$(PURELIB)')')" \
		> "$$($(FLWR_VENV)/bin/python -c '$(PURELIB)')/zz-plantdx-main-venv.pth"
	$(FLWR_VENV)/bin/flower-superlink --version
	rm -f $(FLWR_VENV)/.installed-* && touch $@

federate: install ## three farms (one per crop) train plant_cnn together for 3 rounds on Flower (configs/federated.yaml)
	$(BIN)/plantdx federate -c configs/federated.yaml --clients 3 --partition crop --rounds 3

serve: install ## serve the bundled default model on http://127.0.0.1:8000 (page at /, API docs at /docs)
	@# drift checks run beside the service, not in it: a background `plantdx monitor --watch`, stopped with it
	$(BIN)/plantdx monitor --watch > monitoring.log 2>&1 & trap 'kill $$! 2>/dev/null' EXIT INT TERM; $(BIN)/plantdx serve

train: install ## train the default CPU recipe (configs/default.yaml) on the PlantVillage images
	$(BIN)/plantdx train -c configs/default.yaml

smoke: install ## one short epoch on a slice of the real images (configs/smoke.yaml)
	$(BIN)/plantdx train -c configs/smoke.yaml

default-model: install ## retrain the bundled model (two stages, about 2 h 15 min on 2 cores) and export it into the package
	@# resumable: an interrupted stage goes on with `plantdx train -c <its config> --resume runs/<its run>`
	$(BIN)/plantdx train -c configs/default_model.yaml --result-json runs/default-model.json
	$(BIN)/plantdx train -c configs/default_model_refit.yaml --result-json runs/default-model-refit.json \
		--set model.pretrained_path=$$($(BIN)/python -c 'import json; print(json.load(open("runs/default-model.json"))["best_checkpoint"])')
	$(BIN)/plantdx export -c configs/default_model_refit.yaml --train-result runs/default-model-refit.json \
		-o src/plantdx/default_bundle

bench: install ## latency/throughput of every runtime of the bundled model -> benchmarks/results/
	$(BIN)/plantdx bench --threads 2

bench-serve: install ## plantdx serve vs the in-process ceiling, plain FastAPI, LitServe, BentoML over HTTP (~11 min, `wrk`)
	@# LitServe and BentoML run in venvs of their own, made on first use in .bench-venvs/; ARGS="--duration 2" etc.
	PYTHONPATH=src $(BIN)/python benchmarks/serve.py $(ARGS)

bench-soak: install ## 5 min of plantdx serve at 80 % of its bench-serve capacity, drift checks every minute beside it
	PYTHONPATH=src $(BIN)/python benchmarks/serve.py --soak 300 $(ARGS)

install-size: install ## MB that `pip install plantdx[serve]` (and [serve,monitor]) adds to a fresh venv
	PYTHONPATH=src $(BIN)/python benchmarks/install_size.py $(ARGS)

bench-edge: install ## the offline page in Chromium: parity with the server, wire sizes, first load, latency (BUNDLE=...)
	$(BIN)/python benchmarks/edge.py $(BUNDLE)

reliability: install ## load, soak, overload, fault drills, hostile input, API fuzzing, security (~12 min) -> docs/reliability.md
	$(BIN)/pytest tests/serve/test_faults.py tests/serve/test_server_process.py tests/serve/test_redis.py \
		tests/serve/test_hostile_input.py tests/serve/test_api_fuzz.py tests/serve/test_security.py \
		tests/serve/test_admission.py tests/serve/test_limits_and_admin.py
	$(BIN)/python benchmarks/reliability.py

test: install ## run the whole test suite (unit, real-data, training, DDP)
	$(BIN)/pytest

lint: install ## ruff (lint + format check) and mypy
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks
