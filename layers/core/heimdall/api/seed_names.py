"""The request names of the original Heimdall's clients (the seeds), read as aliases of this API's.

The export job request (:mod:`heimdall.api.schemas`) calls these before its own validation, on the
decoded JSON object, so that a seed request becomes the request this API already understands:
``POST /api/v1/export/jobs``: ``export_format`` (one format) is ``formats: [export_format]``;
``export_config`` may name the format(s) (``format``, ``formats``); ``optimization_config`` asks for
the optimised builds a job makes (``quantization: int8|fp16|none``, ``int8``, ``fp16``, ``tensorrt``:
booleans), added to the requested format, else to ``onnx`` (they derive from it). The deployment
request's seed names (``deployment_type``, ``deployment_config``) are part of its own model
(:mod:`heimdall.logic.deployment_requests`), which the use case shares.

Nothing is dropped: any other key of ``export_config`` / ``optimization_config`` (the opset, dynamic
axes, pruning, ...: the manifest or the imported model fixes those) and any alias that disagrees with
the current name sent beside it is a :class:`~heimdall.errors.RequestInvalid` (422) naming the field.
The error is raised as is from inside pydantic, which lets it through untouched, so the answer says
exactly which field.
"""

from __future__ import annotations

from typing import Any

from heimdall.errors import RequestInvalid
from heimdall.types import ExportFormat

__all__ = ["seed_export_job"]

_FORMATS = [f.value for f in ExportFormat]
#: optimization_config's boolean switches, and the format each asks for.
_SWITCHES = {
    "int8": ExportFormat.ONNX_INT8,
    "fp16": ExportFormat.ONNX_FP16,
    "tensorrt": ExportFormat.TENSORRT,
}
#: optimization_config.quantization's values (None: no quantization).
_QUANTIZATION: dict[str | None, ExportFormat | None] = {
    "int8": ExportFormat.ONNX_INT8,
    "fp16": ExportFormat.ONNX_FP16,
    "float16": ExportFormat.ONNX_FP16,
    "none": None,
    None: None,
}


def seed_export_job(data: Any) -> Any:
    """An export job request with the seeds' ``export_format``, ``export_config`` and
    ``optimization_config`` turned into ``formats`` (see the module docstring)."""
    if not isinstance(data, dict) or not {"export_format", "export_config", "optimization_config"} & set(
        data
    ):
        return data
    data = dict(data)
    if not isinstance(data.get("formats", []), list):
        raise RequestInvalid("formats must be a list of format names", field="formats")
    formats = _as_formats(data.get("formats"), field="formats")
    for value, field in _named_formats(data):
        if formats is not None and set(value) != set(formats):
            raise RequestInvalid(
                f"{field} ({', '.join(value)}) and formats ({', '.join(formats)}) differ", field=field
            )
        formats = value
    extra = _optimised(data.pop("optimization_config", None))
    if extra:
        if "formats" in data:  # the caller listed every format: the switches must agree with the list
            for fmt, field in extra:
                if formats is None or fmt.value not in formats:
                    raise RequestInvalid(
                        f"{field} asks for {fmt.value}, which formats does not list", field=field
                    )
        else:
            base = formats or [ExportFormat.ONNX.value]
            formats = list(dict.fromkeys([*base, *(fmt.value for fmt, _ in extra)]))
    if formats is not None:
        data["formats"] = formats
    return data


def _as_formats(value: Any, *, field: str) -> list[str] | None:
    """``value`` as a list of format names (None when absent); refused when it is not one."""
    if value is None:
        return None
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, str) and v in _FORMATS for v in values):
        raise RequestInvalid(f"{field} must name formats among {', '.join(_FORMATS)}", field=field)
    return list(values)


def _named_formats(data: dict[str, Any]) -> list[tuple[list[str], str]]:
    """The formats ``export_format`` and ``export_config`` name, each with its field (both popped)."""
    named: list[tuple[list[str], str]] = []
    if "export_format" in data:
        value = data.pop("export_format")
        if not isinstance(value, str):
            raise RequestInvalid("export_format names one format (a string)", field="export_format")
        named.append((_as_formats(value, field="export_format") or [], "export_format"))
    config = data.pop("export_config", None)
    if config is None:
        return named
    if not isinstance(config, dict):
        raise RequestInvalid("export_config must be an object", field="export_config")
    for key, value in config.items():
        field = f"export_config.{key}"
        if key not in ("format", "formats"):
            raise RequestInvalid(
                f"{field} cannot be honoured: a job's options are its formats (the opset and shapes come "
                "from the checkpoint's manifest, or the imported model)",
                field=field,
            )
        found = _as_formats(value, field=field)
        if found is not None:
            named.append((found, field))
    return named


def _optimised(config: Any) -> list[tuple[ExportFormat, str]]:
    """The formats ``optimization_config`` asks for, each with the field that asked."""
    if config is None:
        return []
    if not isinstance(config, dict):
        raise RequestInvalid("optimization_config must be an object", field="optimization_config")
    asked: list[tuple[ExportFormat, str]] = []
    for key, value in config.items():
        field = f"optimization_config.{key}"
        if key == "quantization":
            if not (value is None or isinstance(value, str)) or value not in _QUANTIZATION:
                raise RequestInvalid(
                    f"{field} must be int8, fp16 or none (INT8 here is static, calibrated)", field=field
                )
            fmt = _QUANTIZATION[value]
            if fmt is not None:
                asked.append((fmt, field))
        elif key in _SWITCHES:
            if not isinstance(value, bool):
                raise RequestInvalid(f"{field} must be true or false", field=field)
            if value:
                asked.append((_SWITCHES[key], field))
        else:
            raise RequestInvalid(
                f"{field} cannot be honoured: optimization_config takes quantization, {', '.join(_SWITCHES)}",
                field=field,
            )
    return asked
