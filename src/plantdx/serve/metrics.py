"""Prometheus metrics, one registry per app (tests build many apps in one process)."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "plantdx_http_requests_total",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "plantdx_http_request_duration_seconds",
            "Request latency by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.active = Gauge("plantdx_http_requests_active", "Requests being served now", registry=r)
        self.inference_seconds = Histogram(
            "plantdx_model_inference_seconds", "ONNX Runtime time per batch", buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "plantdx_batch_size", "Images per inference call", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r
        )
        self.queue_depth = Gauge("plantdx_queue_depth", "Images waiting for inference", registry=r)
        self.queue_capacity = Gauge(
            "plantdx_queue_capacity", "Images the inference queue holds before shedding (serve.queue_size)", registry=r
        )
        self.shed = Counter("plantdx_shed_total", "Requests refused to protect latency", ["reason"], registry=r)
        self.predictions = Counter("plantdx_predictions_total", "Predictions by class", ["label"], registry=r)
        self.confidence = Histogram(
            "plantdx_prediction_confidence",
            "Calibrated confidence of predictions",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
            registry=r,
        )
        self.abstentions = Counter("plantdx_abstentions_total", "Predictions the model abstained on", registry=r)
        self.model_info = Info("plantdx_model", "The model being served", registry=r)
        self.ready = Gauge("plantdx_ready", "1 when the service is ready for traffic", registry=r)
        self.jobs = Counter("plantdx_jobs_total", "Async jobs by final state", ["state"], registry=r)
        # monitoring: the prediction log, drift checks and live accuracy from feedback
        self.log_dropped = Counter(
            "plantdx_prediction_log_dropped_total", "Predictions not logged because the log queue was full", registry=r
        )
        self.log_queue = Gauge(
            "plantdx_prediction_log_queue", "Predictions waiting to be written to the log", registry=r
        )
        self.drift_detected = Gauge("plantdx_drift_detected", "1 when the last drift check found drift", registry=r)
        self.drift_share = Gauge("plantdx_drift_share", "Share of monitored columns that drifted", registry=r)
        self.drift_score = Gauge(
            "plantdx_drift_feature_score",
            "Drift score per monitored column (test p-value or distance)",
            ["feature"],
            registry=r,
        )
        self.drift_checked = Gauge(
            "plantdx_drift_last_check_timestamp_seconds", "When the last drift check finished", registry=r
        )
        self.drift_window = Gauge("plantdx_drift_window_size", "Predictions in the last drift window", registry=r)
        self.feedback = Counter("plantdx_feedback_total", "Labels received by outcome", ["outcome"], registry=r)
        self.live_accuracy = Gauge(
            "plantdx_live_accuracy", "Accuracy of served predictions on the labelled feedback window", registry=r
        )
        self.live_labelled = Gauge(
            "plantdx_live_labelled", "Labelled predictions behind plantdx_live_accuracy", registry=r
        )

    def set_model(self, version: str, architecture: str, classes: Sequence[str], runtime: str) -> None:
        self.model_info.info(
            {"version": version, "architecture": architecture, "classes": str(len(classes)), "runtime": runtime}
        )

    def observe_prediction(self, label: str, confidence: float, abstained: bool) -> None:
        self.predictions.labels(label=label).inc()
        self.confidence.observe(confidence)
        if abstained:
            self.abstentions.inc()
