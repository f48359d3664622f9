"""The inputs of an inference request: its body read, each value checked against the model and converted.

No HTTP and no AWS here, and no session: only what the session declares (:class:`DeclaredTensor`).

* :func:`read_payload` reads the request body, ``{"inputs": {name: value}}`` or ``{"input": value}``.
* :func:`prepare_inputs` turns the named values into arrays, checked against the model's declared
  names, dtypes and shapes; every refusal is :class:`InvalidInput` (400) with the expected and the
  received shape and dtype in the message.
* :func:`normalize` applies a bundle's ``normalization_stats``.

Value rules of :func:`prepare_inputs` (JSON carries numbers, booleans, strings and null):

* float inputs (``float16``/``float32``/``float64``) take numbers, ints included; every value must be
  finite (NaN and infinities are refused: JSON has no spelling for them, and a model fed NaN answers
  NaN, which the response could not carry either);
* integer inputs take integers only (``2.0`` is refused, so no value is silently truncated), each
  within the dtype's range;
* ``bool`` inputs take ``true``/``false`` only;
* strings, nulls, objects, ragged lists and values nested deeper than the declared rank are refused,
  and booleans are refused where numbers are expected. (A list mixing booleans and integers is
  read by numpy as integers; it is accepted as such.)
* dimensions the model names or leaves unknown (``"batch"``) accept any positive size, fixed ones
  must match exactly, and the rank must match. At most :data:`MAX_INPUT_ELEMENTS` elements in all.

An input may instead be a binary tensor, ``{"dtype": "float32", "shape": [1, 3, 128, 32],
"data_b64": "..."}``: the base64 of the raw values, little-endian, in C order. Its dtype must be the
input's own (no conversion), its shape must fit as above, the data must be exactly that many bytes,
floats finite and bools 0 or 1. It skips building Python number lists (the JSON parse and the list
walk are most of a request's cost at batch 32) and carries floats exactly.

numpy is imported inside the functions that need it: this module is importable from the core Lambda
layer, which does not have it (it comes with the onnx layer).
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson
import pybase64

from heimdall.bundle.models import NormalizationStats
from heimdall.errors import HeimdallError, InvalidJson, ShapeMismatch
from heimdall.inference.sessions import DeclaredTensor, Dim

if TYPE_CHECKING:
    import numpy as np

#: Elements accepted in one request, all inputs together (16 MiB of float32).
MAX_INPUT_ELEMENTS = 1 << 22
#: The keys of an input given as a binary tensor (instead of nested lists).
BINARY_TENSOR_KEYS = frozenset({"dtype", "shape", "data_b64"})
#: ONNX Runtime's tensor type names and the numpy dtypes requests are converted to.
_ORT_DTYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
}

#: How a received array's numpy kind is named in messages (JSON's vocabulary, not numpy's).
_KIND_NAMES = {"b": "bool", "i": "int", "u": "int", "f": "float", "U": "string", "S": "string"}


class InvalidInput(HeimdallError):
    """An inference request whose inputs do not fit the model's declared names, dtypes or shapes."""

    code = "INVALID_INPUT"
    http_status = 400


# --- the body ------------------------------------------------------------------------------------


def read_payload(body: bytes) -> dict[str, Any]:
    """The request body's inputs for :func:`prepare_inputs`: ``{"inputs": {...}}`` → the named inputs,
    ``{"input": x}`` → ``{"input": x}``; :class:`InvalidJson` or :class:`InvalidInput` otherwise."""
    if not body.strip():
        raise InvalidInput(
            'the body is empty: send {"inputs": {name: values}} or {"input": values}', field="body"
        )
    try:
        # orjson: strict (no NaN/Infinity, 64-bit integers, 1024 levels at most) and about four
        # times faster than json on the nested number lists an inference body is made of.
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"the body is not valid JSON: {exc}", field="body") from None
    if isinstance(document, dict) and set(document) == {"inputs"} and isinstance(document["inputs"], dict):
        inputs: dict[str, Any] = document["inputs"]
        if inputs:
            return inputs
    if isinstance(document, dict) and set(document) == {"input"}:
        return document
    raise InvalidInput(
        'expected {"inputs": {name: values, ...}} or {"input": values} (nested lists of numbers)',
        field="body",
    )


# --- inputs --------------------------------------------------------------------------------------


def prepare_inputs(session_io: Sequence[DeclaredTensor], payload: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Arrays for ``session.run`` from the request's named nested lists, checked against the model.

    ``session_io`` is ``session.get_inputs()``. ``payload`` names every input, or holds only the key
    ``input`` when the model has exactly one input (whatever its name). Raises :class:`InvalidInput`
    for unknown or missing names, values the input's dtype cannot take (see the module docstring),
    ragged lists, a wrong rank or size, or more than :data:`MAX_INPUT_ELEMENTS` elements in all.
    """
    declared = {spec.name: spec for spec in session_io}
    if len(declared) == 1 and set(payload) == {"input"}:
        payload = {next(iter(declared)): payload["input"]}
    unknown = [str(name) for name in payload if name not in declared]
    missing = [name for name in declared if name not in payload]
    for problem, names in (("unknown", unknown), ("missing", missing)):
        if names:
            raise InvalidInput(
                f"{problem} input {', '.join(repr(n) for n in names)}; "
                f"the model's inputs are {', '.join(repr(n) for n in declared)}",
                field="inputs",
                expected_inputs=list(declared),
            )
    arrays: dict[str, np.ndarray] = {}
    budget = MAX_INPUT_ELEMENTS
    for name, spec in declared.items():
        array = _to_array(spec, payload[name], budget)
        budget -= array.size
        arrays[name] = array
    return arrays


def _to_array(spec: DeclaredTensor, value: Any, budget: int) -> np.ndarray:
    import numpy as np  # noqa: PLC0415 - keep the core layer free of numpy at import time

    dtype_name = _ORT_DTYPES.get(spec.type)
    shape = list(spec.shape)
    wanted = f"{dtype_name or spec.type} {_show(shape)}"

    def refuse(reason: str, **details: Any) -> InvalidInput:
        return InvalidInput(
            f"input {spec.name!r} expects {wanted}: {reason}",
            field=f"inputs.{spec.name}",
            expected_dtype=dtype_name or spec.type,
            expected_shape=[d if isinstance(d, int) else (d or "?") for d in shape],
            **details,
        )

    if dtype_name is None:
        raise refuse(f"the endpoint cannot feed {spec.type} inputs")
    if isinstance(value, Mapping):
        return _from_binary(value, dtype_name, shape, budget, refuse)
    nominal = _nominal_size(value, len(shape))
    if nominal > budget:
        raise refuse(f"the request holds more than {MAX_INPUT_ELEMENTS} elements in all")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise refuse("got a ragged or non-numeric list") from None
    got_shape = list(array.shape)
    kind = array.dtype.kind
    got = f"{_kind_name(kind)} {_show(got_shape)}"
    received = {"received_shape": got_shape, "received_dtype": _kind_name(kind)}
    if kind not in "biuf":
        raise refuse(f"got {got} (numbers or booleans in rectangular lists expected)", **received)
    if array.ndim != len(shape) or not all(_dim_fits(d, n) for d, n in zip(shape, got_shape, strict=True)):
        raise refuse(f"got {got}", **received)
    if array.size > budget:
        raise refuse(f"the request holds more than {MAX_INPUT_ELEMENTS} elements in all", **received)
    target = np.dtype(dtype_name)
    if target.kind == "b":
        if kind != "b":
            raise refuse(f"got {got} (booleans expected)", **received)
        return array
    if kind == "b":
        raise refuse(f"got {got} (numbers expected, not booleans)", **received)
    if target.kind == "f":
        if kind == "f" and not bool(np.isfinite(array).all()):
            raise refuse("got NaN or infinite values", **received)
        with np.errstate(over="ignore"):  # overflow becomes inf, refused just below
            converted = array.astype(target)
        if not bool(np.isfinite(converted).all()):  # a float64 beyond float16/float32's range
            raise refuse(f"got values outside the range of {dtype_name}", **received)
        return converted
    # Integer target: integers only, each within the dtype's range.
    if kind == "f":
        raise refuse(f"got {got} (integers expected)", **received)
    info = np.iinfo(target)
    if array.size and (int(array.min()) < info.min or int(array.max()) > info.max):
        raise refuse(f"got values outside the range of {dtype_name} [{info.min}, {info.max}]", **received)
    return array.astype(target)


def _from_binary(
    value: Mapping[str, Any],
    dtype_name: str,
    shape: list[Dim],
    budget: int,
    refuse: Callable[..., InvalidInput],
) -> np.ndarray:
    """A binary tensor ``{"dtype", "shape", "data_b64"}``: raw little-endian values of the declared dtype."""
    import numpy as np  # noqa: PLC0415 - keep the core layer free of numpy at import time

    if set(value) != BINARY_TENSOR_KEYS:
        raise refuse(
            f"a binary tensor has exactly the keys {sorted(BINARY_TENSOR_KEYS)}, "
            f"got {sorted(map(str, value))}"
        )
    dtype, dims, data = value["dtype"], value["shape"], value["data_b64"]
    if dtype != dtype_name:
        raise refuse(f"got a binary tensor of dtype {dtype!r} (no conversion: send {dtype_name})")
    if (
        not isinstance(dims, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims)
        or len(dims) != len(shape)
        or not all(_dim_fits(d, n) for d, n in zip(shape, dims, strict=True))
    ):
        raise refuse(
            f"got a binary tensor of shape {dims!r}", received_shape=dims if isinstance(dims, list) else None
        )
    count = math.prod(dims)
    if count > budget:
        raise refuse(f"the request holds more than {MAX_INPUT_ELEMENTS} elements in all")
    target = np.dtype(dtype_name).newbyteorder("<")
    if not isinstance(data, str) or len(data) != 4 * math.ceil(count * target.itemsize / 3):
        raise refuse(
            f"data_b64 must be the base64 of {count * target.itemsize} bytes ({count} × {dtype_name})"
        )
    try:
        raw = pybase64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise refuse("data_b64 is not valid base64") from None
    if len(raw) != count * target.itemsize:
        raise refuse(f"data_b64 must be the base64 of {count * target.itemsize} bytes, got {len(raw)}")
    array = np.frombuffer(raw, dtype=target).reshape(dims).astype(dtype_name, copy=False)
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        raise refuse("got NaN or infinite values", received_shape=dims)
    if array.dtype.kind == "b" and raw.translate(None, b"\x00\x01"):  # a byte other than 0 and 1
        raise refuse("a bool tensor holds bytes 0 and 1 only", received_shape=dims)
    return array


def _nominal_size(value: Any, rank: int) -> int:
    """The element count ``value`` claims along its first elements (cheap, before any conversion)."""
    size = 1
    for _ in range(rank):
        if not isinstance(value, list):
            break
        size *= len(value)
        if not value:
            break
        value = value[0]
    return size


def _dim_fits(declared: Dim, size: int) -> bool:
    if isinstance(declared, int) and declared >= 0:
        return size == declared
    return size > 0  # named or unknown: any positive size


def _kind_name(kind: str) -> str:
    return _KIND_NAMES.get(kind, "non-numeric")


def _show(shape: Sequence[Any]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# --- normalisation -------------------------------------------------------------------------------


def normalize(
    arrays: Mapping[str, np.ndarray], stats: NormalizationStats, *, axis: int = 1
) -> dict[str, np.ndarray]:
    """Apply a bundle's ``normalization_stats`` to every floating-point input: ``(x - mean) / std``.

    ``feature_means[i]``/``feature_stds[i]`` belong to index ``i`` of ``axis`` (the channel axis of
    NCHW inputs, the feature axis of ``[batch, features]`` ones: DESIGN §3's example holds the three
    ImageNet channel statistics for ``[1, 3, 128, 32]``). One mean and one std apply to every
    element. Integer and bool inputs are left alone. Computed in the input's dtype. Raises
    ``ShapeMismatch`` (the bundle's stats do not fit its model) when the counts disagree, or when the
    stats are partial (means without stds, or the reverse), which cannot normalise anything.
    """
    import numpy as np  # noqa: PLC0415 - keep the core layer free of numpy at import time

    pair = stats.means_and_stds()
    if pair is None:
        raise ShapeMismatch(
            "normalization_stats are partial (feature_means and feature_stds are both needed)",
            field="normalization_stats",
        )
    count = len(pair[0])
    out: dict[str, np.ndarray] = {}
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            out[name] = array
            continue
        means = np.asarray(pair[0], dtype=array.dtype)
        stds = np.asarray(pair[1], dtype=array.dtype)
        if count > 1:
            if array.ndim <= axis or array.shape[axis] != count:
                raise ShapeMismatch(
                    f"normalization_stats hold {count} features but input {name!r} has shape "
                    f"{list(array.shape)} (features on axis {axis})",
                    field="normalization_stats",
                )
            view = [1] * array.ndim
            view[axis] = count
            means, stds = means.reshape(view), stds.reshape(view)
        out[name] = ((array - means) / stds).astype(array.dtype, copy=False)
    return out


__all__ = [
    "BINARY_TENSOR_KEYS",
    "MAX_INPUT_ELEMENTS",
    "InvalidInput",
    "normalize",
    "prepare_inputs",
    "read_payload",
]
