"""Domain exceptions, raised where the problem happens; the CLI and the app map them to exits and HTTP codes."""


class PlantdxError(Exception):
    """Base of every error plantdx raises on purpose; its message is meant for a person."""

    exit_code = 1


class ConfigError(PlantdxError):
    """The settings are wrong (unknown key, wrong type, unreadable file)."""

    exit_code = 2


class DataError(PlantdxError):
    """The dataset cannot be used as asked (missing folder, too few images, bad manifest)."""


class ModelError(PlantdxError):
    """A model cannot be built as configured (unknown name, missing pretrained weights)."""


class TrackingError(PlantdxError):
    """MLflow cannot be reached or does not hold what was asked for."""
