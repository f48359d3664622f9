"""Whether ONNX Runtime can serve a bundle's model, and the opset upgrade that makes an old one servable.

ONNX Runtime dropped the kernels of some operators at old opsets (``BatchNormalization(6)``,
``AveragePool(1)``, ``Gemm(6)``, elementwise ops with the old ``broadcast`` attribute, ...), so a
model stamped with opset 6 passes every structural check and then cannot be loaded. The serving
check (:func:`check_serving`, in a child process with the structural check's memory and time limits:
:mod:`heimdall.bundle._serving_worker`) decides:

Threshold: try, do not guess
    The model is loaded in ONNX Runtime as it is; only when ONNX Runtime refuses it with
    ``NOT_IMPLEMENTED`` (no kernel for an operator at that opset) and its opset is below the target is
    it upgraded. A table of "supported opsets" would be both too strict (many opset-6 models load and
    are served unchanged, byte for byte) and too loose (ONNX Runtime's minimum moves between
    releases, and only kernel look-up at session creation knows); the installed runtime's own answer
    is the one serving will get. Any other refusal is not an opset problem: the model is not servable.
Target: :data:`UPGRADE_OPSET` (17)
    The opset this project exports at (``heimdall.contracts.manifest.Manifest.opset``'s default), the one its
    INT8/FP16/TensorRT steps and tests use, within every ONNX Runtime release we accept (1.20+:
    opset 21) and every ``onnx`` (1.17+). One conversion, not a search for the lowest opset that
    loads: each step of the search costs a conversion and a session, and a model upgraded to
    the lowest opset that loads today is the next one to break when a runtime drops more kernels.
Check: the bundle's sample predictions
    A sample whose ``input_metadata`` names every graph input and whose ``prediction`` names graph
    outputs is run on the upgraded model; each output must agree within ``atol`` =
    :class:`heimdall.contracts.manifest.Tolerances` ``.onnx`` (1e-5, the FP32 parity bound of conversions)
    plus
    ``rtol`` = :data:`UPGRADE_RTOL` (1e-4) of the expected value: the sender computed its samples
    with another runtime (or another kernel for the same op: the converter may rewrite a node), so
    large outputs need a relative bound; 1e-4 is still about 10^3 float32 ulps, far below what a
    wrongly converted attribute does.

A failed conversion, load or sample check leaves the model importable but not servable, with the
reason recorded (:class:`heimdall.contracts.jobs.OpsetUpgrade`). The original ONNX is never changed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heimdall.bundle.models import SamplePrediction
from heimdall.bundle.structural import StructuralReport, run_checking_worker
from heimdall.contracts.jobs import OpsetUpgrade
from heimdall.contracts.manifest import Tolerances
from heimdall.errors import BundleError, ConfigurationError
from heimdall.settings import BundleLimits

__all__ = [
    "UPGRADE_OPSET",
    "UPGRADE_RTOL",
    "ServingCheck",
    "check_serving",
    "checkable_samples",
    "upgraded_key",
]

#: The default-domain opset old models are upgraded to (see the module docstring).
UPGRADE_OPSET = 17
#: Relative tolerance of the sample check, on top of the FP32 parity bound (see the module docstring).
UPGRADE_RTOL = 1e-4
SERVING_WORKER_MODULE = "heimdall.bundle._serving_worker"


@dataclass(frozen=True)
class ServingCheck:
    """What the serving check found: servable or not (and why), and the upgrade it tried, if any.

    ``upgraded`` is the file of the upgraded model when ``upgrade.result`` is ``upgraded``.
    """

    servable: bool
    reason: str | None
    from_opset: int
    upgrade: OpsetUpgrade | None = None
    upgraded: Path | None = None


def check_serving(
    onnx_path: Path,
    structure: StructuralReport,
    *,
    limits: BundleLimits,
    workdir: Path,
    samples: Sequence[SamplePrediction] | None = None,
    target_opset: int = UPGRADE_OPSET,
    force: bool = False,
) -> ServingCheck:
    """Whether ONNX Runtime serves the model at ``onnx_path`` (which passed the structural pass that
    gave ``structure``), upgrading it when it must; see the module docstring.

    ``force`` upgrades to ``target_opset`` even when the model loads (the offline ``bundle upgrade``).
    The upgraded model is written under ``workdir``. A model that is not servable is a result, not an
    error; a check that runs out of memory or time, or refuses the model, says so as the reason.
    ``ConfigurationError`` (onnx or onnxruntime missing, the worker cannot start) is raised.
    """
    out = workdir / f"model.opset{target_opset}.onnx"
    checkable = checkable_samples(samples, structure)
    samples_path: Path | None = None
    if checkable:
        samples_path = workdir / "serving-samples.json"
        samples_path.write_text(json.dumps(checkable), encoding="utf-8")
    request = {
        "path": str(onnx_path.resolve()),
        "expected_sha256": structure.onnx_sha256,
        "memory_bytes": limits.structural_memory_bytes,
        "cpu_seconds": math.ceil(limits.structural_timeout_s) + 1,
        "limits": {
            "max_onnx_bytes": limits.max_onnx_bytes,
            "max_nodes": limits.max_nodes,
            "max_subgraph_depth": limits.max_subgraph_depth,
            "allowed_domains": list(limits.allowed_domains),
        },
        "target_opset": target_opset,
        "force": force,
        "out_path": str(out.resolve()),
        "samples_path": str(samples_path.resolve()) if samples_path else None,
        "atol": Tolerances().onnx,
        "rtol": UPGRADE_RTOL,
    }
    try:
        report = run_checking_worker(SERVING_WORKER_MODULE, request, limits, what="serving check")
    except BundleError as exc:
        # Out of memory or time, or a refusal the structural pass did not foresee: the model passed
        # that pass, so it stays importable, and is not servable for this reason.
        reason = f"the serving check refused the model ({exc.code}): {exc.message}"
        return ServingCheck(servable=False, reason=reason[:1024], from_opset=structure.opset)
    return _parse_report(report, out)


def checkable_samples(
    samples: Sequence[SamplePrediction] | None, structure: StructuralReport
) -> list[dict[str, Any]]:
    """The samples that can check a model: ``input_metadata`` names every graph input, and
    ``prediction`` names at least one graph output; as ``{"sample_id", "inputs", "outputs"}``."""
    inputs = [spec.name for spec in structure.inputs]
    outputs = {spec.name for spec in structure.outputs}
    checkable = []
    for sample in samples or ():
        given = sample.input_metadata
        predicted = sample.prediction or {}
        named = [name for name in predicted if name in outputs]
        if inputs and all(name in given for name in inputs) and named:
            checkable.append(
                {
                    "sample_id": sample.sample_id,
                    "inputs": {name: given[name] for name in inputs},
                    "outputs": {name: predicted[name] for name in named},
                }
            )
    return checkable


def upgraded_key(onnx_prefix: str, model_id: str, opset: int) -> str:
    """Where an indexed model's upgraded copy lives in the artifacts bucket: ids only, never names."""
    return f"{onnx_prefix}{model_id}/model.opset{opset}.onnx"


def _parse_report(report: dict[str, Any], out: Path) -> ServingCheck:
    try:
        raw = report.get("upgrade")
        upgrade = OpsetUpgrade.model_validate(raw) if raw is not None else None
        check = ServingCheck(
            servable=bool(report["servable"]),
            reason=str(report["reason"])[:1024] if report.get("reason") else None,
            from_opset=int(report["from_opset"]),
            upgrade=upgrade,
            upgraded=out if upgrade is not None and upgrade.result == "upgraded" else None,
        )
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigurationError(f"the serving check worker returned a malformed report: {exc}") from None
    if check.upgraded is not None and not check.upgraded.is_file():
        raise ConfigurationError(f"the serving check reported an upgraded model but wrote none at {out}")
    return check
