"""Monitoring: the drift reference profile (``profile``), the prediction log (``log``) and Evidently drift reports
(``drift``); the service's periodic checks and alert webhook live in ``plantdx.serve.monitoring``.

``profile`` is numpy only and is imported by export; the rest needs the serve extra (SQLAlchemy, Evidently).
"""

from plantdx.monitor.profile import (
    EMBEDDING_COMPONENTS,
    IMAGE_FEATURES,
    PROFILE_VERSION,
    features_from_input,
    fit_embedding_projection,
    image_features,
    project_embeddings,
    reference_profile,
)

__all__ = [
    "EMBEDDING_COMPONENTS",
    "IMAGE_FEATURES",
    "PROFILE_VERSION",
    "features_from_input",
    "fit_embedding_projection",
    "image_features",
    "project_embeddings",
    "reference_profile",
]
