"""plantdx: plant disease diagnosis from leaf photos, and the model lifecycle around it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("plantdx")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0"
