"""Monitoring: the drift reference profile (``profile``), the prediction log (``log``), Evidently drift reports
(``drift``) and alert hooks (``alerts``).

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
