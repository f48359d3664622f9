"""The `.heimdall` bundle format: models, reader (integrity pass), writer, signing, verification."""

from heimdall.bundle.models import (
    FORMAT_VERSION,
    Bundle,
    BundleMetadata,
    Component,
    ComponentSelection,
    Integrity,
    ModelInfo,
    NormalizationStats,
    PerformanceMetrics,
    SamplePrediction,
    Signature,
    TrainingConfig,
)
from heimdall.bundle.reader import ReadResult, parse_metadata, read_bundle
from heimdall.bundle.writer import WriteResult, write_bundle

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "BundleMetadata",
    "Component",
    "ComponentSelection",
    "Integrity",
    "ModelInfo",
    "NormalizationStats",
    "PerformanceMetrics",
    "ReadResult",
    "SamplePrediction",
    "Signature",
    "TrainingConfig",
    "WriteResult",
    "parse_metadata",
    "read_bundle",
    "write_bundle",
]
