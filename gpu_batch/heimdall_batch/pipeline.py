"""The conversion pipeline: runs the stages in order, times each, records every outcome.

safe load → build model → export ONNX → parity → benchmark → FP16 / INT8 / TorchScript / TensorRT →
export package → bundle → ``result.json`` (always written, and written last).

A model that arrives as a ``.heimdall`` bundle (:func:`run_bundle_conversion`) starts from its FP32
ONNX model instead: both bundle validation passes and the serving check (an old opset is upgraded as
at indexing; the upgraded copy is then the FP32 model) → FP16 / INT8 / TensorRT checked against that
model in ONNX Runtime → ONNX Runtime benchmark → export package; the PyTorch stages are reported
skipped (:mod:`heimdall_batch.from_bundle`).

The FP32 ONNX model is the product: if loading, building, exporting or its parity check fails, the
job fails with the error's exit code (3 invalid input, 4 unsupported, 1 anything else). An optional
format that fails is recorded as failed with its reason and the job goes on (the other formats and the
package are still written, for inspection; the bundle is not, so no model of a failed job is indexed),
but the job then ends ``FAILED`` with ``FORMAT_FAILED``,
exit code 4 (terminal, as for an unfaithful FP32 export: a retry gives the same numbers): a
format that was asked for and not delivered is a failed job. One that cannot run
here (TensorRT without a GPU) is recorded as skipped with the reason, which is no failure.
:func:`_verdict` is the one place that decides; ``result.json``'s ``status`` and ``exit_code``, the
Batch container's and the CLI's exit status all follow it.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from heimdall.contracts.jobs import (
    PACKAGE_FILE_NAME,
    RESULT_FILE_NAME,
    BenchmarkReport,
    ConversionResult,
    FormatOutcome,
    FormatStatus,
    OpsetUpgrade,
    ParityCheck,
    StageRecord,
    WeightsChoice,
)
from heimdall.contracts.manifest import (
    EMBEDDED_MANIFEST_KEY,
    ExportFormat,
    Manifest,
    parse_manifest,
    read_manifest,
)
from heimdall.errors import (
    BundleError,
    ConversionError,
    ExportParityFailed,
    HeimdallError,
    InvalidManifest,
    InvalidOnnx,
    ParityError,
)
from heimdall_batch import bundling, from_bundle, loading
from heimdall_batch.benchmark import benchmark
from heimdall_batch.export_onnx import OnnxExport, export_onnx
from heimdall_batch.outputs import file_record
from heimdall_batch.parity import FP32_ONNX_REFERENCE, Runner, check_parity, onnx_runner, torch_runner
from heimdall_batch.specs import IOSpec, io_spec
from heimdall_batch.weights import build_from_checkpoint

#: ``progress(stage, state)`` with state "start", "ok", "failed" or "skipped".
Progress = Callable[[str, str], None]


@dataclass
class ConversionOptions:
    """How to run one conversion."""

    job_id: str
    #: Overrides the manifest's ``formats`` (the FP32 ONNX is always built).
    formats: list[ExportFormat] | None = None
    #: Folder of TensorRT timing caches (one file per GPU and TensorRT version), read and updated.
    timing_cache_dir: Path | None = None
    run_benchmark: bool = True
    progress: Progress | None = None


@dataclass
class _StageMark:
    skipped: str | None = None


@dataclass
class _Run:
    """What the stages produce, gathered for ``result.json``."""

    options: ConversionOptions
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    stages: list[StageRecord] = field(default_factory=list)
    outcomes: list[FormatOutcome] = field(default_factory=list)
    manifest: Manifest | None = None
    benchmark: BenchmarkReport | None = None
    #: A bundle job: its model's sha256, and the opset upgrade that made the FP32 model, if any.
    bundle_onnx_sha256: str | None = None
    opset_upgrade: OpsetUpgrade | None = None
    #: A checkpoint job: which of the checkpoint's weights the model took.
    weights: WeightsChoice | None = None

    @contextmanager
    def stage(self, name: str) -> Iterator[_StageMark]:
        """Time a stage and record how it ended (its exception propagates).

        The body may set ``mark.skipped`` to a reason: the stage then ends as skipped.
        """
        self._report(name, "start")
        start = time.perf_counter()
        mark = _StageMark()
        try:
            yield mark
        except BaseException as exc:
            message = exc.message if isinstance(exc, HeimdallError) else f"{type(exc).__name__}: {exc}"
            self.stages.append(StageRecord(name=name, status="failed", seconds=_since(start), error=message))
            self._report(name, "failed")
            raise
        status = "skipped" if mark.skipped is not None else "ok"
        self.stages.append(StageRecord(name=name, status=status, seconds=_since(start), error=mark.skipped))
        self._report(name, status)

    def skipped(self, name: str, reason: str) -> None:
        self.stages.append(StageRecord(name=name, status="skipped", seconds=0.0, error=reason))
        self._report(name, "skipped")

    def _report(self, name: str, state: str) -> None:
        if self.options.progress is not None:
            self.options.progress(name, state)


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 4)


def run_conversion(
    checkpoint: Path,
    out_dir: Path,
    options: ConversionOptions,
    *,
    manifest: Manifest | bytes | None = None,
) -> ConversionResult:
    """Convert ``checkpoint`` into ``out_dir``; always writes ``out_dir/result.json`` last.

    ``manifest`` is the sidecar manifest (parsed, or the bytes of ``heimdall.json``) when there is
    one; otherwise the checkpoint must embed it.
    Returns the result (also on failure: ``status`` is then ``FAILED`` with the error's code, message
    and exit code); never raises for a bad checkpoint or model.
    """
    return _guarded(out_dir, options, lambda run: _convert(checkpoint, out_dir, run, manifest))


def run_bundle_conversion(
    bundle: Path, out_dir: Path, options: ConversionOptions, *, expected_sha256: str | None = None
) -> ConversionResult:
    """Build the export package of the model in the ``.heimdall`` bundle at ``bundle`` into ``out_dir``.

    The bundle is verified first (a refused bundle fails the job with its code, exit code 3), then
    ONNX Runtime must serve its model (``MODEL_NOT_SERVABLE``, exit code 4, otherwise). The FP32
    model is the bundle's, byte for byte, or its opset upgrade when ONNX Runtime cannot load it as
    stamped (recorded in the result and the package); ``options.formats`` default to
    :data:`~heimdall.contracts.jobs.DEFAULT_BUNDLE_FORMATS`; with ``expected_sha256`` the bundle's model
    must hash to it. No new bundle is written: the source is one. Like :func:`run_conversion`,
    always writes ``result.json`` last and never raises for a bad input.
    """
    return _guarded(out_dir, options, lambda run: _convert_bundle(bundle, out_dir, run, expected_sha256))


def _guarded(out_dir: Path, options: ConversionOptions, convert: Callable[[_Run], None]) -> ConversionResult:
    """Run ``convert`` and write ``result.json`` however it ends."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULT_FILE_NAME).unlink(missing_ok=True)  # a retried attempt starts without one
    run = _Run(options=options)
    try:
        convert(run)
    except HeimdallError as exc:
        # A refused bundle is refused input, as a refused checkpoint is: terminal.
        exit_code = getattr(exc, "exit_code", 3 if isinstance(exc, BundleError) else 1)
        return _finish(run, out_dir, error=(exc.code, exc.message, exit_code))
    except Exception as exc:  # a bug or a native failure: retryable, reported, never a traceback only
        return _finish(run, out_dir, error=("INTERNAL_ERROR", f"{type(exc).__name__}: {exc}", 1))
    return _finish(run, out_dir, error=None)


def failed_result(out_dir: Path, options: ConversionOptions, error: HeimdallError) -> ConversionResult:
    """Write and return the ``result.json`` of a job that failed before it could convert anything."""
    out_dir.mkdir(parents=True, exist_ok=True)
    exit_code = int(getattr(error, "exit_code", 1))
    return _finish(_Run(options=options), out_dir, error=(error.code, error.message, exit_code))


def _convert(checkpoint: Path, out_dir: Path, run: _Run, sidecar: Manifest | bytes | None) -> None:
    with run.stage("load"):
        if isinstance(sidecar, bytes):
            sidecar = read_manifest(sidecar)
        key = sidecar.state_dict_key if sidecar is not None else None
        loaded = loading.load_checkpoint(checkpoint, state_dict_key=key)
        manifest = sidecar or _embedded_manifest(loaded.embedded_manifest)
        if run.options.formats is not None:
            requested = [f.value for f in run.options.formats]
            manifest = parse_manifest({**manifest.model_dump(mode="json"), "formats": requested})
        run.manifest = manifest
    with run.stage("build_model"):
        model, run.weights = build_from_checkpoint(manifest, loaded)
        spec = io_spec(manifest, model)
    with run.stage("export_onnx"):
        exported = export_onnx(model, manifest, spec, out_dir)
    reference = torch_runner(model)
    with run.stage("parity_onnx"):
        try:
            fp32 = onnx_runner(exported.path)
            checks = check_parity(
                reference, fp32, spec, tolerance=manifest.tolerances.onnx, label="onnx", manifest=manifest
            )
        except ParityError as exc:
            # The FP32 model is the product: without parity there is nothing faithful to ship, and
            # retrying will not change the numbers, so this is terminal.
            raise ExportParityFailed(exc.message, **exc.details) from None
    done = _Converted(model, manifest, spec, exported, reference, fp32, out_dir)
    _record_fp32(run, done, parity=checks)
    _optional_formats_and_package(run, done)
    if _verdict(run, None) is not None:
        # The job will end FAILED: a bundle in its output would be indexed as a model of a failed job.
        run.skipped("bundle", NO_BUNDLE_AFTER_FAILED_FORMAT)
        return
    with run.stage("bundle"):
        bundle = bundling.build_bundle_metadata(
            manifest, spec, model, job_id=run.options.job_id, opset=exported.opset, benchmark=run.benchmark
        )
        bundling.write_job_bundle(bundle, exported.path, out_dir, manifest)


def _convert_bundle(bundle_path: Path, out_dir: Path, run: _Run, expected_sha256: str | None) -> None:
    # Outside out_dir: every file there is an output.
    with tempfile.TemporaryDirectory(prefix="heimdall-bundle-") as tmp:
        _convert_opened_bundle(bundle_path, out_dir, run, expected_sha256, Path(tmp))


def _convert_opened_bundle(
    bundle_path: Path, out_dir: Path, run: _Run, expected_sha256: str | None, workdir: Path
) -> None:
    with run.stage("load"):
        opened = from_bundle.open_bundle(bundle_path, out_dir, expected_sha256=expected_sha256)
        run.bundle_onnx_sha256, run.opset_upgrade = opened.read.onnx_sha256, opened.upgrade
        manifest = from_bundle.bundle_manifest(opened, run.options.formats)
        spec = from_bundle.bundle_io_spec(opened, manifest)
        run.manifest = manifest
        try:
            fp32 = onnx_runner(opened.onnx.path)
        except Exception as exc:  # ORT's own exception types: the bundle's model is unusable, terminal
            raise InvalidOnnx(f"ONNX Runtime cannot load the bundle's model: {exc}") from None
        derivable = from_bundle.derivable_model(opened, workdir)
    for stage in ("build_model", "export_onnx", "parity_onnx"):
        run.skipped(stage, from_bundle.NO_PYTORCH_MODEL)
    # The FP32 model in ONNX Runtime is the reference the other formats are checked against.
    done = _Converted(None, manifest, spec, opened.onnx, fp32, fp32, out_dir, opened.upgrade, derivable)
    upgrade = opened.upgrade
    _record_fp32(
        run,
        done,
        parity=[],
        source="bundle",
        parity_note=(
            "checked where the bundle was exported (this job has no PyTorch model)"
            if upgrade is None
            else f"upgraded from opset {upgrade.from_opset} to {upgrade.to_opset} and checked against "
            f"{upgrade.samples_checked} of the bundle's sample predictions (max abs error "
            f"{upgrade.max_abs_error if upgrade.max_abs_error is not None else 'n/a'})"
        ),
    )
    _optional_formats_and_package(run, done)
    run.skipped("bundle", "the source is a bundle: no new one is written")


def _record_fp32(run: _Run, done: _Converted, *, parity: list[ParityCheck], **details: str) -> None:
    """The FP32 model's outcome, timed by the benchmark (PyTorch too when there is a PyTorch model)."""
    exported = done.exported
    record = file_record(exported.path)
    outcome = FormatOutcome(
        format=ExportFormat.ONNX,
        status=FormatStatus.BUILT,
        file=exported.path.name,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        parity=parity,
        details={"opset": exported.opset, "ir_version": exported.ir_version, **details},
    )
    run.outcomes.append(outcome)
    if not run.options.run_benchmark:
        run.skipped("benchmark", "disabled")
        return
    with run.stage("benchmark"):
        torch_reference = done.reference if done.model is not None else None
        run.benchmark = benchmark(torch_reference, done.fp32, done.spec, manifest=done.manifest)
        outcome.latency_ms = dict(run.benchmark.onnx_ms)


def _optional_formats_and_package(run: _Run, done: _Converted) -> None:
    for fmt in done.manifest.formats:
        if fmt is not ExportFormat.ONNX:
            run.outcomes.append(_optional_format(fmt, run, done))
    with run.stage("package"):
        from heimdall_batch.package import write_export_package  # noqa: PLC0415 - keeps import order simple

        write_export_package(
            done.out_dir,
            done.manifest,
            done.spec,
            run.outcomes,
            run.benchmark,
            job_id=run.options.job_id,
            onnx_metadata=done.onnx_metadata(run.bundle_onnx_sha256),
            reference="PyTorch" if done.model is not None else FP32_ONNX_REFERENCE,
        )


def _embedded_manifest(embedded: dict[str, Any] | None) -> Manifest:
    if embedded is None:
        raise InvalidManifest(
            "no manifest: give heimdall.json beside the checkpoint, or embed it in a dict checkpoint "
            f"under the key {EMBEDDED_MANIFEST_KEY!r}"
        )
    return parse_manifest(embedded, source="the embedded manifest")


@dataclass(frozen=True)
class _Converted:
    """What the optional formats are built from."""

    model: torch.nn.Module | None  # None: the model came as a bundle
    manifest: Manifest
    spec: IOSpec
    exported: OnnxExport
    reference: Runner  # PyTorch, or the FP32 ONNX model when there is no PyTorch model
    fp32: Runner  # ONNX Runtime on the FP32 model
    out_dir: Path
    upgrade: OpsetUpgrade | None = None  # the opset upgrade that made the FP32 model of a bundle
    #: The file FP16, INT8 and TensorRT are built from: the FP32 model's, or a copy of a bundle's with
    #: its initializers as constants (:func:`heimdall_batch.from_bundle.derivable_model`).
    derivable: Path | None = None

    @property
    def source(self) -> Path:
        """What the optional ONNX formats are built from."""
        return self.derivable or self.exported.path

    def onnx_metadata(self, bundle_onnx_sha256: str | None) -> dict[str, Any]:
        """The FP32 model's facts for the export package; an upgraded one's with where it came from."""
        facts: dict[str, Any] = dict(self.exported.compatibility())
        if self.upgrade is not None:
            facts["bundle_onnx_sha256"] = bundle_onnx_sha256
            facts["opset_upgrade"] = self.upgrade.model_dump(mode="json", exclude={"onnx_key"})
        return facts


def _optional_format(fmt: ExportFormat, run: _Run, done: _Converted) -> FormatOutcome:
    """Build one optional format; its failure is recorded, never raised."""
    try:
        with run.stage(fmt.value) as mark:
            outcome = _build_format(fmt, run, done)
            if outcome.status is FormatStatus.SKIPPED:
                mark.skipped = outcome.reason or "skipped"
    except HeimdallError as exc:
        reason = f"{exc.code}: {exc.message}"
        return FormatOutcome(format=fmt, status=FormatStatus.FAILED, reason=reason, details=exc.details)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        return FormatOutcome(format=fmt, status=FormatStatus.FAILED, reason=reason)
    return outcome


def _build_format(fmt: ExportFormat, run: _Run, done: _Converted) -> FormatOutcome:
    # Each optional stage imports what it needs (the float16 converter, quantisation, TensorRT).
    manifest, spec, out_dir = done.manifest, done.spec, done.out_dir
    if fmt is ExportFormat.ONNX_FP16:
        from heimdall_batch.fp16 import build_fp16  # noqa: PLC0415

        return build_fp16(done.source, out_dir, spec, manifest, done.reference)
    if fmt is ExportFormat.ONNX_INT8:
        from heimdall_batch.int8 import build_int8  # noqa: PLC0415

        return build_int8(done.source, out_dir, spec, manifest, done.reference)
    if fmt is ExportFormat.TORCHSCRIPT:
        if done.model is None:
            return FormatOutcome(format=fmt, status=FormatStatus.SKIPPED, reason=from_bundle.NO_PYTORCH_MODEL)
        from heimdall_batch.torchscript import build_torchscript  # noqa: PLC0415

        return build_torchscript(done.model, out_dir, spec, manifest, done.reference)
    if fmt is ExportFormat.TENSORRT:
        from heimdall_batch.tensorrt import build_tensorrt  # noqa: PLC0415

        caches = run.options.timing_cache_dir
        return build_tensorrt(
            done.source,
            out_dir,
            spec,
            manifest,
            done.fp32,
            timing_cache_in=caches,
            timing_cache_out=caches,
        )
    raise ConversionError(f"unknown format {fmt}")


#: ``result.json``'s error code of a job whose FP32 model was built but a requested format failed.
FORMAT_FAILED = "FORMAT_FAILED"
#: Its exit code: 4, terminal (Batch does not retry it): the format's check fails the same way again.
FORMAT_FAILED_EXIT = 4
#: Why a job whose requested format failed writes no bundle (its stage record's error).
NO_BUNDLE_AFTER_FAILED_FORMAT = "a requested format failed: no bundle, so no model of a failed job is indexed"


def _verdict(run: _Run, error: tuple[str, str, int] | None) -> tuple[str, str, int] | None:
    """The job's error (code, message, exit code), or None when it succeeded: the one decision.

    ``error`` is what stopped the job, if anything; a job that ran to its end fails still when a
    requested format failed (skipped ones do not count). The exit code of a failure is never 0, so
    ``status`` and ``exit_code`` cannot disagree.
    """
    if error is not None:
        code, message, exit_code = error
        return code, message, exit_code or 1
    failed = [o for o in run.outcomes if o.status is FormatStatus.FAILED]
    if not failed:
        return None
    listing = "; ".join(f"{o.format.value}: {o.reason or 'no reason recorded'}" for o in failed)
    return FORMAT_FAILED, f"{len(failed)} requested format(s) failed: {listing}"[:4000], FORMAT_FAILED_EXIT


def _finish(run: _Run, out_dir: Path, *, error: tuple[str, str, int] | None) -> ConversionResult:
    manifest = run.manifest
    error = _verdict(run, error)
    outputs = {
        path.name: file_record(path)
        for path in sorted(out_dir.iterdir())
        if path.is_file() and path.name != RESULT_FILE_NAME
    }
    bundle_name = bundling.bundle_file_name(manifest) if manifest is not None else None
    result = ConversionResult(
        job_id=run.options.job_id,
        status="FAILED" if error else "SUCCEEDED",
        error_code=error[0] if error else None,
        error_message=error[1] if error else None,
        exit_code=error[2] if error else 0,
        model_name=manifest.model_name if manifest else None,
        version=manifest.version if manifest else None,
        architecture=manifest.architecture if manifest else None,
        formats=run.outcomes,
        benchmark=run.benchmark,
        stages=run.stages,
        outputs=outputs,
        bundle_file=bundle_name if bundle_name in outputs else None,
        package_file=PACKAGE_FILE_NAME if PACKAGE_FILE_NAME in outputs else None,
        bundle_onnx_sha256=run.bundle_onnx_sha256,
        opset_upgrade=run.opset_upgrade,
        weights=run.weights,
        started_at=run.started_at,
        finished_at=datetime.now(UTC),
    )
    # Written last, atomically: its presence means every output listed in it is complete.
    tmp = out_dir / f".{RESULT_FILE_NAME}.tmp"
    tmp.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(out_dir / RESULT_FILE_NAME)
    return result
