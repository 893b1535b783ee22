"""Request and response schemas (pydantic v2); their examples are the OpenAPI docs at /docs."""

from __future__ import annotations

import base64
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from plantdx.serve.diagnosis import Answer


class TopK(BaseModel):
    label: str
    probability: float = Field(ge=0, le=1)


class Prediction(BaseModel):
    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "prediction": "Tomato___Early_blight",
                    "confidence": 0.97,
                    "probabilities": {"Tomato___Early_blight": 0.97, "Tomato___Target_Spot": 0.02},
                    "top_k": [
                        {"label": "Tomato___Early_blight", "probability": 0.97},
                        {"label": "Tomato___Target_Spot", "probability": 0.02},
                    ],
                    "abstained": False,
                    "reason": None,
                    "inference_time_ms": 2.4,
                    "model_version": "3",
                    "request_id": "0f8e6c1d2b4a4f6e9d7c5b3a19e2f4d6",
                    "heatmap": None,
                }
            ]
        },
    )

    prediction: str = Field(description="the most likely class, Crop___Disease (also given when abstaining)")
    confidence: float = Field(ge=0, le=1, description="calibrated probability of that class")
    probabilities: dict[str, float]
    top_k: list[TopK]
    abstained: bool = Field(description="true when the model is not sure; treat the prediction as a guess")
    reason: str | None = None
    inference_time_ms: float = Field(description="decode, inference and post-processing, once the upload was read")
    model_version: str
    request_id: str
    heatmap: str | None = Field(None, description="with ?explain=true: RGBA PNG, base64, the model's input size")

    @classmethod
    def build(cls, answer: Answer, *, request_id: str) -> Prediction:
        d = answer.diagnosis
        return cls(
            prediction=d.label,
            confidence=d.confidence,
            probabilities=d.probabilities,
            top_k=[TopK(label=label, probability=prob) for label, prob in d.top_k],
            abstained=d.abstained,
            reason=d.reason,
            inference_time_ms=round(answer.elapsed_ms, 3),
            model_version=answer.model_version,
            request_id=request_id,
            heatmap=base64.b64encode(answer.heatmap).decode() if answer.heatmap is not None else None,
        )


class BatchRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"images": ["/9j/4AAQSkZJRgABAQAAAQABAAD..."]}]}
    )

    images: list[str] = Field(min_length=1, description="base64-encoded JPEG, PNG or WebP images (16 at most)")


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class BatchItem(BaseModel):
    index: int
    prediction: Prediction | None = None
    error: ErrorDetail | None = None


class BatchResponse(BaseModel):
    predictions: list[BatchItem]


class JobCreated(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]


class JobStatus(BaseModel):
    job_id: str
    status: Literal["queued", "running", "done", "failed"]
    result: Prediction | None = None
    error: ErrorDetail | None = None


class EdgeInfo(BaseModel):
    """Where the page gets the in-browser model (``model.edge.onnx``), and what its bytes must hash to."""

    sha256: str = Field(description="sha256 of the file: the page refuses a download that does not match")
    size: int = Field(description="bytes of the file (the service may send it gzip-compressed)")
    url: str = Field(description="immutable: /edge/model-<sha256>.onnx")
    weights: str | None = Field(None, description="how the weights are stored: fp32, fp16 or int8")


class ModelInfo(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    alias: str | None
    source: str
    architecture: str | None
    classes: list[str]
    metrics: dict[str, Any]
    runtime: str
    input_size: int
    preprocess: dict[str, Any] = Field(description="preprocess.json: resize, crop, interpolation, mean, std")
    temperature: float
    abstain_threshold: float
    loaded_at: float
    degraded: str | None = None
    reject_label: str | None = Field(None, description="the 'not a leaf' class: never an answer, a reason to abstain")
    edge: EdgeInfo | None = Field(None, description="the in-browser model for offline diagnosis; none: not available")


class ReloadResult(BaseModel):
    previous_version: str
    version: str
    source: str


class Check(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    status: Literal["ok", "degraded", "failing"]
    checks: dict[str, Check]


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"request_id": "0f8e6c1d2b4a4f6e9d7c5b3a19e2f4d6", "label": "Tomato___healthy"}]
        }
    )

    request_id: str = Field(min_length=1, max_length=80, description="the request_id of a served prediction")
    label: str = Field(min_length=1, max_length=200, description="the true class, one of the model's classes")


class FeedbackResponse(BaseModel):
    request_id: str
    label: str
    predicted: str = Field(description="what the service answered")
    correct: bool
    replaced: bool = Field(description="true when this label replaced an earlier one for the same request")
    previous_label: str | None = None
    image_kept: bool = Field(description="the photo is stored, so `plantdx retrain` can train on it")


class DriftStatus(BaseModel):
    status: Literal["ok", "drift", "insufficient_data", "not_checked"]
    message: str | None = None
    checked_at: float | None = Field(None, description="unix time of the check")
    report_url: str | None = Field(None, description="the Evidently HTML report of this check")
    summary: dict[str, Any] | None = Field(
        None, description="drift_detected, drift_share, drifted_columns, per-column p-values, window, confidence"
    )
