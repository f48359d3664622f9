"""ONNX Runtime sessions for the inference endpoint: created once per container and model, then run.

No HTTP and no AWS here: the handler passes its collaborators in (``fetch`` downloads the model from
wherever it lives).

* :class:`ModelCache` keeps ONNX Runtime sessions, one per ``(model_id, onnx_sha256)``, created once
  per container and reused. A model is fetched to ``workdir/{sha}.onnx`` only when absent, its sha256
  checked, and the project's structural pass (:func:`heimdall.bundle.structural.check_structure`, in
  a child process with memory and time limits) run on it *before* any session exists.
* :func:`run` runs a session and times ``session.run`` alone.

The request's side (names, dtypes and shapes of the inputs) is :mod:`heimdall.inference.inputs`.
onnxruntime is imported inside :func:`create_session`: this module is importable from the core Lambda
layer, which does not have it (it comes with the onnx layer).
"""

from __future__ import annotations

import hashlib
import logging
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

from heimdall.bundle.structural import StructuralReport, check_structure
from heimdall.errors import ChecksumMismatch, InvalidOnnx, TooLarge
from heimdall.settings import BundleLimits

if TYPE_CHECKING:
    import numpy as np

logger = logging.getLogger(__name__)

#: Sessions kept per container; the least recently used goes first.
DEFAULT_CACHE_ENTRIES = 4
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 20

Dim = int | str | None
#: Writes the model file at the path it is given (the S3 download, in the function).
Fetch = Callable[[Path], None]


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
    check_model_file(path, onnx_sha256, limits)
    structure = check_structure(path, None, limits=limits, expected_sha256=onnx_sha256)
    session = create_session(path)
    logger.info("created ONNX Runtime session", extra={"model_id": model_id, "onnx_sha256": onnx_sha256})
    return LoadedModel(model_id=model_id, onnx_sha256=onnx_sha256, session=session, structure=structure)


def check_model_file(path: Path, expected_sha256: str, limits: BundleLimits) -> None:
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


def create_session(path: Path) -> Session:
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


# --- runs ----------------------------------------------------------------------------------------


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
    "DeclaredTensor",
    "Dim",
    "Fetch",
    "InferenceResult",
    "LoadedModel",
    "ModelCache",
    "Session",
    "check_model_file",
    "create_session",
    "run",
]
