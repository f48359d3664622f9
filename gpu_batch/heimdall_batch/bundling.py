"""Stage: the `.heimdall` bundle of the FP32 ONNX model, with the manifest's components."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import torch

from heimdall.bundle.models import Bundle, BundleMetadata, ModelInfo, PerformanceMetrics
from heimdall.bundle.verify import verify_bundle
from heimdall.bundle.writer import write_bundle
from heimdall.contracts.jobs import BenchmarkReport
from heimdall.contracts.manifest import Manifest
from heimdall.errors import ConversionError
from heimdall_batch.specs import IOSpec

#: Ids of what a job writes are derived from the job id, so a retried attempt writes the same bundle.
_JOB_NAMESPACE = uuid.UUID("0b6f7d4a-6c1e-4f0e-9d8a-4f1c2b3a5e77")


def bundle_file_name(manifest: Manifest) -> str:
    """``{model_name}-v{version}.heimdall`` (DESIGN §3)."""
    return f"{manifest.model_name}-v{manifest.version}.heimdall"


def build_bundle_metadata(
    manifest: Manifest,
    spec: IOSpec,
    model: torch.nn.Module,
    *,
    job_id: str,
    opset: int,
    benchmark: BenchmarkReport | None,
    created_at: datetime | None = None,
) -> Bundle:
    """The bundle's metadata: model info from the manifest and the graph, components from the manifest.

    Shapes are declared with the manifest's batch size (the graph itself carries the dynamic axis).
    The benchmark's batch-1 ONNX Runtime latency and speedup are added to the performance metrics.
    """
    batch = manifest.input_shape[0]
    metrics = manifest.performance_metrics
    if benchmark is not None and "1" in benchmark.onnx_ms:
        metrics = (metrics or PerformanceMetrics()).model_copy(
            update={
                "inference_latency_ms": benchmark.onnx_ms["1"],
                "onnx_speedup_factor": benchmark.speedup.get("1"),
            }
        )
    return Bundle(
        format_version="1.0.0",
        bundle_metadata=BundleMetadata(
            bundle_id=str(uuid.uuid5(_JOB_NAMESPACE, f"{job_id}:bundle")),
            created_at=created_at or datetime.now(UTC),
            created_by=manifest.created_by or "system",
            description=manifest.description or None,
        ),
        model=ModelInfo(
            model_id=str(uuid.uuid5(_JOB_NAMESPACE, f"{job_id}:model")),
            model_name=manifest.model_name,
            version=manifest.version,
            architecture=manifest.architecture,
            framework="pytorch",
            onnx_opset=opset,
            input_shape=list(manifest.input_shape),
            output_shape=[[batch, *t.shape[1:]] for t in spec.outputs],
            parameters_count=sum(p.numel() for p in model.parameters()),
            job_id=job_id,
        ),
        training_config=manifest.training_config,
        performance_metrics=metrics,
        normalization_stats=manifest.normalization_stats,
        sample_predictions=manifest.sample_predictions,
    )


def write_job_bundle(bundle: Bundle, onnx_path: Path, out_dir: Path, manifest: Manifest) -> Path:
    """Write the bundle with the bundle writer and verify it as ``heimdall bundle verify`` would."""
    path = out_dir / bundle_file_name(manifest)
    write_bundle(bundle, onnx_path, path)
    report = verify_bundle(path)
    if not report.valid:
        raise ConversionError(f"the job's own bundle does not verify: {report.code}: {report.message}")
    return path
