"""Diagnosis routes: one photo, a batch of photos, and async jobs."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile as StarletteUpload
from starlette.exceptions import HTTPException

from plantdx.serve.deps import EngineDep, JobsDep, RequestIdDep, SettingsDep
from plantdx.serve.engine import Engine
from plantdx.serve.errors import (
    BadImageError,
    InvalidRequestError,
    NotFoundError,
    ServiceError,
    TooLargeError,
    UnsupportedMediaError,
)
from plantdx.serve.limits import charge, rate_limited
from plantdx.serve.schemas import (
    BatchItem,
    BatchRequest,
    BatchResponse,
    ErrorBody,
    ErrorDetail,
    JobCreated,
    JobStatus,
    Prediction,
)
from plantdx.serve.uploads import TYPE_ALIASES, UploadLimits, check_upload, sniff

log = logging.getLogger("plantdx.serve")
TopKQuery = Annotated[int | None, Query(ge=1, le=100, description="how many classes to list (default 3)")]
ExplainQuery = Annotated[bool, Query(description="add a class-activation heat map (PNG, base64)")]

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "malformed request",
        413: "file or image too large",
        415: "not a JPEG, PNG or WebP",
        422: "unreadable image or invalid parameters",
        429: "over the rate limit (see Retry-After)",
        503: "shedding load or not ready (see Retry-After)",
    }.items()
}


async def diagnose(
    engine: Engine, data: bytes, content_type: str | None, request_id: str, *, top_k: int | None, explain: bool
) -> Prediction:
    answer = await engine.diagnose(data, content_type, top_k=top_k, explain=explain, request_id=request_id)
    return Prediction.build(answer, request_id=request_id)


def _remember(request: Request, p: Prediction) -> None:
    """What the access log line reports about this request."""
    state = request.scope.setdefault("state", {})
    state.update(
        prediction=p.prediction, confidence=round(p.confidence, 4), model_version=p.model_version, abstained=p.abstained
    )


RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")
# One photo: a multipart 'file' part, or the photo itself as the body (no multipart framing to parse).
ONE_PHOTO = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "string", "format": "binary", "description": "the photo"}},
                    "required": ["file"],
                }
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in RAW_TYPES},
        },
    }
}


def create_predict_router() -> APIRouter:
    router = APIRouter(prefix="/v1", tags=["diagnosis"], responses=ERRORS)
    # One budget for the three routes that diagnose (a batch of k costs k: `charge`): per route, a client would get
    # three.
    limited = [Depends(rate_limited)]

    @router.post("/predict", response_model=Prediction, openapi_extra=ONE_PHOTO, dependencies=limited)
    async def predict(
        request: Request,
        engine: EngineDep,
        request_id: RequestIdDep,
        top_k: TopKQuery = None,
        explain: ExplainQuery = False,
    ) -> Prediction:
        """Diagnose one leaf photo: a multipart ``file``, or the photo as the body (``Content-Type: image/jpeg``)."""
        data, content_type = await read_photo(request, engine.limits)
        result = await diagnose(engine, data, content_type, request_id, top_k=top_k, explain=explain)
        _remember(request, result)
        return result

    @router.post(
        "/predict/batch",
        response_model=BatchResponse,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": BatchRequest.model_json_schema()},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                            "required": ["files"],
                        }
                    },
                },
            }
        },
        dependencies=limited,
    )
    async def predict_batch(
        request: Request,
        engine: EngineDep,
        settings: SettingsDep,
        request_id: RequestIdDep,
        top_k: TopKQuery = None,
    ) -> BatchResponse:
        """Diagnose up to 16 photos (base64 JSON or multipart ``files``); a bad item gets its own error."""
        limit_n = settings.serve.max_batch_images
        items = await _batch_items(request, limit_n, engine.limits.max_bytes)
        charge(request, len(items))

        async def one(index: int, item: tuple[bytes, str | None] | ServiceError) -> BatchItem:
            if isinstance(item, ServiceError):
                return BatchItem(index=index, error=ErrorDetail(code=item.code, message=str(item)))
            try:
                p = await diagnose(engine, item[0], item[1], f"{request_id}-{index}", top_k=top_k, explain=False)
            except ServiceError as exc:
                return BatchItem(index=index, error=ErrorDetail(code=exc.code, message=str(exc)))
            except Exception:  # one item's failure is that item's answer; the others still get theirs
                log.exception("batch item %d failed", index)
                return BatchItem(index=index, error=ErrorDetail(code="internal_error", message="this image failed"))
            return BatchItem(index=index, prediction=p)

        return BatchResponse(predictions=list(await asyncio.gather(*(one(i, x) for i, x in enumerate(items)))))

    @router.post(
        "/jobs",
        response_model=JobCreated,
        status_code=202,
        tags=["jobs"],
        openapi_extra=ONE_PHOTO,
        dependencies=limited,
    )
    async def create_job(
        request: Request,
        jobs: JobsDep,
        engine: EngineDep,
        top_k: TopKQuery = None,
        explain: ExplainQuery = False,
    ) -> JobCreated:
        """Queue a diagnosis (the same photo as predict takes); poll ``GET /v1/jobs/{job_id}`` for the result."""
        data, content_type = await read_photo(request, engine.limits)
        # What predict would refuse without decoding, a job is refused now, not queued. A JPEG's decoded size
        # depends on the model's resize (its DCT scale): before a model is loaded, that one check is left to the
        # worker, which makes them all again.
        min_side = engine.runtime.predictor.resize if engine.runtime is not None else None
        known = min_side is not None or sniff(data) != "image/jpeg"
        limits = engine.limits if known else engine.limits.without_decoded_check()
        check_upload(data, content_type, limits, min_side)
        job = await jobs.submit(data, content_type, top_k, explain)
        request.scope.setdefault("state", {})["job_id"] = job.job_id
        return JobCreated(job_id=job.job_id, status=job.status)  # type: ignore[arg-type]

    @router.get(
        "/jobs/{job_id}",
        response_model=JobStatus,
        tags=["jobs"],
        responses={404: {"model": ErrorBody, "description": "no such job (unknown, or its result expired)"}},
    )
    async def get_job(job_id: str, jobs: JobsDep) -> JobStatus:
        """The state of a job, and its result or error once it has one."""
        job = await jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r} (unknown, or its result expired)")
        return JobStatus.model_validate(job.public())

    return router


async def read_photo(request: Request, limits: UploadLimits) -> tuple[bytes, str | None]:
    """The photo's bytes and declared type: a multipart ``file`` part, or the whole body of an ``image/*`` (or
    ``application/octet-stream``) request. An oversized file is refused by its size before it is read into memory
    (the middleware cuts a raw body off at the same bound). The form is parsed here, not by a FastAPI parameter:
    the request body's schema is ``ONE_PHOTO`` alone."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        parts = (await request.form()).getlist("file")
        if len(parts) > 1:
            raise InvalidRequestError(
                f"{len(parts)} 'file' parts; send one photo, or use /v1/predict/batch for several"
            )
        if not parts:
            raise InvalidRequestError("no 'file' part in the multipart body")
        file = parts[0]
        if not isinstance(file, StarletteUpload):
            raise InvalidRequestError("the 'file' part is a text field; send the photo as a file (with a filename)")
        if file.size is not None and file.size > limits.max_bytes:
            raise TooLargeError(f"the file is {file.size} bytes; the limit is {limits.max_bytes}")
        return await file.read(), file.content_type
    if content_type in RAW_TYPES or content_type in TYPE_ALIASES:
        return await request.body(), content_type
    raise InvalidRequestError(
        "send the photo as a multipart 'file' part, or as the body with Content-Type image/jpeg, image/png or "
        f"image/webp (got {content_type or 'no content type'!r})"
    )


async def _batch_items(request: Request, limit: int, max_bytes: int) -> list[tuple[bytes, str | None] | ServiceError]:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = await request.body()
        # Parsing, validating and base64-decoding 16 large images takes seconds of CPU: off the event loop, so
        # health probes and other requests are answered meanwhile.
        return await asyncio.to_thread(_decode_json_batch, body, limit)
    if content_type == "multipart/form-data":
        try:
            form = await request.form(max_files=limit + 1, max_fields=limit + 8)
        except HTTPException as exc:  # Starlette's answer to a parser error; over its part limits is ours to word
            if exc.status_code == 400 and str(exc.detail).startswith("Too many"):
                raise InvalidRequestError(f"{exc.detail} Send at most {limit} images per batch.") from None
            raise
        parts = form.getlist("files")
        if not parts:
            raise InvalidRequestError("no 'files' parts in the multipart body")
        if len(parts) > limit:
            raise InvalidRequestError(f"{len(parts)} images; send at most {limit} per batch")
        # A part without a filename is a text field: a client bug, not a bad photo. The request is refused, naming
        # it, rather than the part dropped (which would renumber the answers of the others).
        fields = [i for i, f in enumerate(parts) if not isinstance(f, StarletteUpload)]
        if fields:
            raise InvalidRequestError(
                f"'files' part(s) {', '.join(map(str, fields))} of {len(parts)} are text fields, not files"
            )
        out_files: list[tuple[bytes, str | None] | ServiceError] = []
        for f in (p for p in parts if isinstance(p, StarletteUpload)):  # all of them, as checked above
            if f.size is not None and f.size > max_bytes:
                out_files.append(TooLargeError(f"the file is {f.size} bytes; the limit is {max_bytes}"))
            else:
                out_files.append((await f.read(), f.content_type))
        return out_files
    raise UnsupportedMediaError(
        f"send application/json or multipart/form-data, not {content_type or 'no content type'!r}"
    )


__all__ = ["create_predict_router", "diagnose"]


def _decode_json_batch(body: bytes, limit: int) -> list[tuple[bytes, str | None] | ServiceError]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, a 5,000-digit number
        raise InvalidRequestError(f"the body is not valid JSON: {exc}") from None
    try:
        batch = BatchRequest.model_validate(payload)
    except ValueError as exc:
        raise InvalidRequestError(f'expected {{"images": [base64, ...]}}: {exc}') from None
    if len(batch.images) > limit:
        raise InvalidRequestError(f"{len(batch.images)} images; send at most {limit} per batch")
    out: list[tuple[bytes, str | None] | ServiceError] = []
    for encoded in batch.images:
        try:
            out.append((base64.b64decode(encoded, validate=True), None))
        except (binascii.Error, ValueError):
            out.append(BadImageError("not valid base64", code="invalid_base64"))
    return out
