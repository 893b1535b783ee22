"""Data stage: scan and validate a class-folder dataset, split it, feed it to training.

Only the torch-free parts are imported here; ``plantdx.data.datamodule`` and ``plantdx.data.transforms`` pull in
torch and albumentations and are imported by training code alone.
"""

from plantdx.data.scan import DataIssue, DataReport, ImageRecord, scan_dataset
from plantdx.data.split import (
    Manifest,
    ManifestRow,
    check_no_leakage,
    make_manifest,
    manifest_for,
    read_manifest,
    write_manifest,
)

__all__ = [
    "DataIssue",
    "DataReport",
    "ImageRecord",
    "Manifest",
    "ManifestRow",
    "check_no_leakage",
    "make_manifest",
    "manifest_for",
    "read_manifest",
    "scan_dataset",
    "write_manifest",
]
