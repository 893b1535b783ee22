"""Service errors and the one place they become HTTP responses: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from plantdx.errors import PlantdxError


class ServiceError(PlantdxError):
    status_code = 500
    code = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if headers is not None:
            self.headers = headers


class InvalidRequestError(ServiceError):
    status_code = 422
    code = "invalid_request"


class BadImageError(ServiceError):
    status_code = 422
    code = "bad_image"


class UnsupportedMediaError(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class TooLargeError(ServiceError):
    status_code = 413
    code = "too_large"


class OverloadedError(ServiceError):
    """Shed load fast instead of queueing requests that would time out anyway."""

    status_code = 503
    code = "overloaded"
    headers = {"Retry-After": "1"}


class NotReadyError(ServiceError):
    status_code = 503
    code = "not_ready"
    headers = {"Retry-After": "2"}


class NotFoundError(ServiceError):
    status_code = 404
    code = "not_found"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, str(exc)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in err.get('loc', ()) if p != 'body') or 'request'}: {err.get('msg')}"
            for err in exc.errors()
        ]
        return JSONResponse(error_body("invalid_request", "; ".join(problems)), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",  # e.g. a multipart body the parser cannot read
            401: "unauthorized",
            403: "forbidden",
            404: "not_found",
            405: "method_not_allowed",
            413: "too_large",
        }.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)
