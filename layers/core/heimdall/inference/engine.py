"""The inference core behind ``POST /v1/infer/{deployment_id}`` (issue 6): sessions, inputs, runs.

No HTTP and no AWS here: the handler passes its collaborators in (``fetch`` downloads the model from
wherever it lives). Three steps, each a plain function or a small object:

* :class:`ModelCache` keeps ONNX Runtime sessions, one per ``(model_id, onnx_sha256)``, created once
  per container and reused. A model is fetched to ``workdir/{sha}.onnx`` only when absent, its sha256
  checked, and the project's structural pass (:func:`heimdall.bundle.structural.check_structure`, in
  a child process with memory and time limits) run on it *before* any session exists.
* :func:`prepare_inputs` turns the request's named nested lists into arrays, checked against the
  model's declared names, dtypes and shapes; every refusal is :class:`InvalidInput` (400) with the
  expected and the received shape and dtype in the message.
* :func:`normalize` applies a bundle's ``normalization_stats``; :func:`run` runs the session and
  times ``session.run`` alone.

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

numpy and onnxruntime are imported inside the functions that need them: this module is importable
from the core Lambda layer, which has neither (they come with the onnx layer).
"""

from __future__ import annotations

import binascii
import hashlib
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pybase64

from heimdall.bundle.models import NormalizationStats
from heimdall.bundle.structural import StructuralReport, check_structure
from heimdall.errors import ChecksumMismatch, HeimdallError, InvalidOnnx, ShapeMismatch, TooLarge
from heimdall.settings import BundleLimits

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

#: Elements accepted in one request, all inputs together (16 MiB of float32).
MAX_INPUT_ELEMENTS = 1 << 22
#: The keys of an input given as a binary tensor (instead of nested lists).
BINARY_TENSOR_KEYS = frozenset({"dtype", "shape", "data_b64"})
#: Sessions kept per container; the least recently used goes first.
DEFAULT_CACHE_ENTRIES = 4
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20
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

Dim = int | str | None
#: Writes the model file at the path it is given (the S3 download, in the function).
Fetch = Callable[[Path], None]


class InvalidInput(HeimdallError):
    """An inference request whose inputs do not fit the model's declared names, dtypes or shapes."""

    code = "INVALID_INPUT"
    http_status = 400


class DeclaredTensor(Protocol):
    """A graph input or output as ONNX Runtime describes it (``onnxruntime.NodeArg``)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def shape(self) -> Sequence[Dim]: ...


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` this module uses."""

    def get_inputs(self) -> Sequence[DeclaredTensor]: ...

    def get_outputs(self) -> Sequence[DeclaredTensor]: ...

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> Sequence[Any]: ...


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve: its session and what the structural pass learned about it."""

    model_id: str
    onnx_sha256: str
    session: Session
    structure: StructuralReport


@dataclass(frozen=True)
class InferenceResult:
    """Outputs by the model's own names (nested lists) and the time ``session.run`` took."""

    outputs: dict[str, list[Any]]
    latency_ms: float


# --- sessions ------------------------------------------------------------------------------------


class ModelCache:
    """ONNX Runtime sessions by ``(model_id, onnx_sha256)``, created once and reused; thread-safe.

    A small LRU: a container serves a handful of deployments, and a session holds the model's
    weights. Two threads asking for the same model wait for one load; other models stay available
    meanwhile (each key has its own lock).
    """

    def __init__(self, max_entries: int = DEFAULT_CACHE_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, model_id: str, onnx_sha256: str) -> LoadedModel | None:
        """The cached model, or None (does not load)."""
        key = (model_id, onnx_sha256)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def load(
        self,
        model_id: str,
        onnx_sha256: str,
        fetch: Fetch,
        *,
        workdir: Path,
        limits: BundleLimits,
    ) -> LoadedModel:
        """The model's session: from the cache, else fetched, checked and created.

        ``fetch(path)`` must write the model file at ``path``; it is called only when
        ``workdir/{onnx_sha256}.onnx`` is absent. Refusals: ``ChecksumMismatch`` (the sha256 is
        malformed or the file's differs; the file is removed), ``TooLarge``, any error of the
        structural pass (``InvalidOnnx``, ``ExternalData``, ``GraphTooComplex``...), and
        ``InvalidOnnx`` when ONNX Runtime cannot create a session. Nothing is cached on failure.
        """
        cached = self.get(model_id, onnx_sha256)
        if cached is not None:
            return cached
        key = (model_id, onnx_sha256)
        with self._lock:
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            cached = self.get(model_id, onnx_sha256)
            if cached is not None:
                return cached
            try:
                loaded = _load_model(model_id, onnx_sha256, fetch, workdir=workdir, limits=limits)
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                # Cached before the key's lock is dropped, so no later caller loads it again.
                self._entries[key] = loaded
                self._entries.move_to_end(key)
                self._loading.pop(key, None)
                while len(self._entries) > self._max_entries:
                    evicted, _ = self._entries.popitem(last=False)
                    logger.info("evicted ONNX Runtime session", extra={"model_id": evicted[0]})
            return loaded

    def clear(self) -> None:
        """Forget every session (tests; a container never needs to)."""
        with self._lock:
            self._entries.clear()


def _load_model(
    model_id: str, onnx_sha256: str, fetch: Fetch, *, workdir: Path, limits: BundleLimits
) -> LoadedModel:
    if not _SHA256.fullmatch(onnx_sha256):
        # Also what keeps the file name inside workdir.
        raise ChecksumMismatch(
            f"{onnx_sha256!r} is not a lowercase hex sha256", field="onnx_sha256", expected=onnx_sha256
        )
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"{onnx_sha256}.onnx"
    if not path.is_file():
        # Fetched under a private name, moved into place once complete: a crashed or concurrent
        # fetch never leaves a half-written file under the name that means "present".
        partial = workdir / f"{onnx_sha256}.{uuid.uuid4().hex}.part"
        try:
            fetch(partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    _check_file(path, onnx_sha256, limits)
    structure = check_structure(path, None, limits=limits, expected_sha256=onnx_sha256)
    session = _create_session(path)
    logger.info("created ONNX Runtime session", extra={"model_id": model_id, "onnx_sha256": onnx_sha256})
    return LoadedModel(model_id=model_id, onnx_sha256=onnx_sha256, session=session, structure=structure)


def _check_file(path: Path, expected_sha256: str, limits: BundleLimits) -> None:
    """Size cap and sha256 of the file at ``path``; a file that fails either is removed."""
    size = path.stat().st_size
    if size > limits.max_onnx_bytes:
        path.unlink(missing_ok=True)
        raise TooLarge(
            f"the ONNX model is {size} bytes, over the {limits.max_onnx_bytes} byte limit",
            field="onnx_sha256",
        )
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(_HASH_CHUNK):
            digest.update(chunk)
    actual = digest.hexdigest()
    if actual != expected_sha256:
        path.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"the ONNX model's sha256 is {actual} but {expected_sha256} was expected",
            field="onnx_sha256",
            expected=expected_sha256,
            actual=actual,
        )


def _create_session(path: Path) -> Session:
    """A CPU session with the options the rest of the project uses (see heimdall_batch.parity)."""
    import onnxruntime as ort  # noqa: PLC0415 - heavy: the onnx layer, only where a session is made

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle pool threads sleep instead of spinning: a spinning pool burns the Lambda's CPU between
    # requests and steals it from the handler's own work.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session: Session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own (untyped) exception classes
        raise InvalidOnnx(f"ONNX Runtime cannot load the model: {exc}") from exc
    return session


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


# --- normalisation and run -----------------------------------------------------------------------


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


def run(session: Session, arrays: Mapping[str, np.ndarray]) -> InferenceResult:
    """Run ``session`` on ``arrays``; outputs by the model's names, latency of ``session.run`` only."""
    names = [output.name for output in session.get_outputs()]
    started = time.perf_counter()
    values = session.run(names, dict(arrays))
    latency_ms = (time.perf_counter() - started) * 1000.0
    outputs = {name: value.tolist() for name, value in zip(names, values, strict=True)}
    return InferenceResult(outputs=outputs, latency_ms=latency_ms)


__all__ = [
    "DEFAULT_CACHE_ENTRIES",
    "MAX_INPUT_ELEMENTS",
    "InferenceResult",
    "InvalidInput",
    "LoadedModel",
    "ModelCache",
    "normalize",
    "prepare_inputs",
    "run",
]
