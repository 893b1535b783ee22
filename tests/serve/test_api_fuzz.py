"""Property-based fuzzing of the whole API from its own OpenAPI schema (schemathesis, in-process over ASGI).

Every operation gets schema-valid and schema-violating requests; no answer may be a 5xx, and every answer must be
documented: its status code, content type and body schema. Random bytes never make a leaf photo, so the success
answers are checked on real requests against the same schema. Where the schema was wrong, the fix belongs in the
route declarations (``responses=``), never in a weaker check here.
"""

from __future__ import annotations

import atexit
import base64
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import BaseSchema, Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import Receive, Scope, Send

from conftest import TOKEN, jpeg
from plantdx.config import load_settings
from plantdx.inference import default_bundle_path
from plantdx.serve import create_app

pytestmark = pytest.mark.slow

CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 60  # per operation; ~10 s for the whole API on two cores


class FreshAppPerLifespan:
    """An ASGI app that builds a new plantdx app for every lifespan.

    schemathesis ends the app's lifespan after each test and starts it again for the next; plantdx, like any app
    under uvicorn, runs its lifespan once per instance (it shuts its thread pools down at the end).
    """

    def __init__(self, factory: Callable[[], FastAPI]) -> None:
        self.factory = factory
        self.app = factory()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.app = self.factory()
        await self.app(scope, receive, send)


STORE = Path(tempfile.mkdtemp(prefix="plantdx-fuzz-"))  # the prediction log and drift reports (feedback needs them)
atexit.register(shutil.rmtree, STORE, ignore_errors=True)


def _create_app() -> FastAPI:
    """The bundled model with every optional route mounted (admin token set, the prediction log on)."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PLANTDX_")]:
            mp.delenv(key)
        mp.setenv("PLANTDX_ADMIN_TOKEN", TOKEN)
        cfg = load_settings(
            overrides=[
                f"serve.model={default_bundle_path()}",
                "serve.log_level=WARNING",
                "serve.rate_limit=100000/minute",  # the fuzzer is one client; 429s would hide the answers
                f"monitor.log_url=sqlite:///{STORE / 'predictions.db'}",
                f"monitor.report_dir={STORE / 'monitoring'}",
                "monitor.verdict_poll_s=0",
            ]
        )
    return create_app(cfg)


def _create_schema() -> BaseSchema:
    """Built at import from the app's own OpenAPI document: ``schemathesis.pytest.from_fixture`` 4.32 fails under
    pytest 9 (it sets the removed ``Node._nodeid``), and ``from_asgi`` would start the lifespan (load the model)
    during collection."""
    target = FreshAppPerLifespan(_create_app)
    loaded = schemathesis.openapi.from_dict(target.app.openapi())
    loaded.app = target
    loaded.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)
    return loaded


schema = _create_schema()


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
def test_no_5xx_and_every_answer_is_documented(case: Case) -> None:
    case.call_and_validate(checks=[*CONFORMANCE, negative_data_rejection])


def _call(path: str, method: str, expected: int, **case: Any) -> Any:
    """One real request through schemathesis, so its answer is held to the schema like a fuzzed one."""
    response = schema[path][method].Case(**case).call_and_validate(checks=CONFORMANCE)
    assert response.status_code == expected, response.text
    return response.json()


def test_success_answers_match_the_schema() -> None:
    photo = {"file": jpeg()}
    multipart = "multipart/form-data"
    prediction = _call("/v1/predict", "POST", 200, body=photo, media_type=multipart, query={"explain": True})
    assert prediction["heatmap"] and len(prediction["top_k"]) == 3

    images = [base64.b64encode(jpeg(seed=2)).decode(), "%%%"]
    batch = _call("/v1/predict/batch", "POST", 200, body={"images": images}, media_type="application/json")
    items = batch["predictions"]
    assert [i["prediction"] is not None for i in items] == [True, False]
    batch = _call("/v1/predict/batch", "POST", 200, body={"files": [jpeg(), jpeg(seed=3)]}, media_type=multipart)
    assert len(batch["predictions"]) == 2

    job = _call("/v1/jobs", "POST", 202, body=photo, media_type=multipart, query={"top_k": 1})
    deadline, ids = time.monotonic() + 10, {"job_id": job["job_id"]}
    while (state := _call("/v1/jobs/{job_id}", "GET", 200, path_parameters=ids))["status"] not in ("done", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.05)
    assert state["status"] == "done" and len(state["result"]["top_k"]) == 1

    feedback = {"request_id": prediction["request_id"], "label": prediction["prediction"]}
    labelled = _call("/v1/feedback", "POST", 200, body=feedback, media_type="application/json")
    assert labelled["correct"] is True and labelled["predicted"] == prediction["prediction"]
    assert _call("/v1/drift", "GET", 200)["status"] in ("not_checked", "insufficient_data")

    assert _call("/v1/model", "GET", 200)["classes"]
    assert _call("/health", "GET", 200)["status"] in ("ok", "degraded")
    assert _call("/readyz", "GET", 200) == {"status": "ready"}
    reload = _call("/v1/admin/reload", "POST", 200, headers={"Authorization": f"Bearer {TOKEN}"})
    assert reload["version"] == reload["previous_version"]
