"""The pipeline's bundle path, in process: how its refusals end (the CLI and job paths are e2e tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from heimdall.bundle.dialects import Dialect
from heimdall.testing.sample_bundles import reference_bundle, sample_bundle
from heimdall.testing.sample_models import (
    ReferenceModel,
    localization_net_onnx,
    unloadable_after_upgrade_onnx,
)
from heimdall_batch import pipeline
from heimdall_batch.from_bundle import bundle_manifest, open_bundle
from heimdall_batch.pipeline import ConversionOptions, run_bundle_conversion


def bundle_file(folder: Path) -> Path:
    path = folder / "m.heimdall"
    path.write_bytes(sample_bundle(localization_net_onnx(seed=1), num_samples=1))
    return path


def test_a_model_onnx_runtime_cannot_load_is_refused_terminally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unloadable(path: Path, **_: object) -> object:
        raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation")

    monkeypatch.setattr(pipeline, "onnx_runner", unloadable)
    result = run_bundle_conversion(bundle_file(tmp_path), tmp_path / "out", ConversionOptions(job_id="j"))
    assert (result.status, result.error_code, result.exit_code) == ("FAILED", "INVALID_ONNX", 3)
    assert "NOT_IMPLEMENTED" in str(result.error_message)
    assert [s.status for s in result.stages] == ["failed"]


def test_a_wrong_expected_checksum_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_bundle_conversion(
        bundle_file(tmp_path), out, ConversionOptions(job_id="j"), expected_sha256="0" * 64
    )
    assert (result.error_code, result.exit_code) == ("CHECKSUM_MISMATCH", 3)
    assert sorted(p.name for p in out.iterdir()) == ["result.json"]


@pytest.mark.parametrize("dialect", ["canonical", "legacy"])
def test_a_seed_bundle_converts_with_what_its_components_hold(tmp_path: Path, dialect: Dialect) -> None:
    empty = tmp_path / "empty.heimdall"
    empty.write_bytes(sample_bundle(localization_net_onnx(seed=1), dialect=dialect, fallbacks=True))
    manifest = bundle_manifest(open_bundle(empty, _folder(tmp_path / "a")))
    assert manifest.training_config is None and manifest.performance_metrics is None
    assert manifest.normalization_stats is None and manifest.sample_predictions is None
    partial = tmp_path / "partial.heimdall"
    means = [0.485, 0.456, 0.406]
    partial.write_bytes(
        sample_bundle(
            localization_net_onnx(seed=1),
            dialect=dialect,
            fallbacks=True,
            normalization_stats={"feature_means": means},
        )
    )
    manifest = bundle_manifest(open_bundle(partial, _folder(tmp_path / "b")))
    stats = manifest.normalization_stats
    assert stats is not None and stats.feature_means == means and stats.means_and_stds() is None


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def test_a_model_still_unloadable_after_its_opset_upgrade_fails_before_anything_is_built(
    tmp_path: Path,
) -> None:
    data = unloadable_after_upgrade_onnx()
    path = tmp_path / "lrn.heimdall"
    path.write_bytes(reference_bundle(ReferenceModel("lrn", data, {}, {}), with_samples=False))
    out = tmp_path / "out"
    result = run_bundle_conversion(path, out, ConversionOptions(job_id="j", run_benchmark=False))
    assert (result.status, result.error_code, result.exit_code) == ("FAILED", "MODEL_NOT_SERVABLE", 4)
    assert "cannot load the model converted to opset 17" in str(result.error_message)
    assert result.formats == [] and sorted(p.name for p in out.iterdir()) == ["result.json"]


@pytest.mark.parametrize(
    ("model_name", "version", "file_name", "file_version"),
    [
        ("Localization Net", "1.0 beta", "Localization_Net", "1.0_beta"),
        ("../../x", "v/2", "x", "v_2"),
        ("模型", "１", "model", "1"),
    ],
)
def test_a_display_name_that_is_no_file_name_still_converts(
    tmp_path: Path, model_name: str, version: str, file_name: str, file_version: str
) -> None:
    """A bundle's name and version are display text (any of them valid); the job's file names are
    made of them safely, never refused for them."""
    path = tmp_path / "named.heimdall"
    metadata = {"model_name": model_name, "version": version}
    path.write_bytes(sample_bundle(localization_net_onnx(seed=1), num_samples=1, model=metadata))
    manifest = bundle_manifest(open_bundle(path, _folder(tmp_path / "a")))
    assert (manifest.model_name, manifest.version) == (file_name, file_version)
