"""The protocol and the resource limits of the checking child processes.

:func:`serve` is what ``python -m heimdall.bundle._structural_worker`` and
``python -m heimdall.bundle._serving_worker`` run: read one JSON request on stdin, hold the process to
the request's ``memory_bytes`` of address space and ``cpu_seconds`` of CPU time, run the check, and
write exactly one JSON result line to the stdout the process was started with::

    {"ok": true, "report": {...}}
    {"ok": false, "code": "...", "message": "...", "field": null, "details": {}}

The limits apply before the check runs, so before it imports onnx or onnxruntime or reads the model:
this module imports nothing heavy. Running out of memory is reported as ``GRAPH_TOO_COMPLEX`` with
the stage :class:`WorkerState` names.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Callable
from typing import Any

from heimdall.errors import ConfigurationError, GraphTooComplex, HeimdallError, InvalidOnnx

_MAX_REQUEST_BYTES = 1024 * 1024
_MAX_MESSAGE_CHARS = 500


class WorkerState:
    """What the worker is doing and under which memory limit, for the message when memory runs out."""

    stage = "starting"
    memory_bytes = 0


def serve(check: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
    """Read one request, apply its limits, run ``check`` on it, write its one result line.

    The protocol and the limits of every checking child process (the structural check of
    :mod:`heimdall.bundle._structural_worker`, the serving check of :mod:`heimdall.bundle._serving_worker`):
    ``check`` returns the report, or raises a typed error.
    """
    result_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints (ours or a native library's) go to stderr, not into the result
    out = os.fdopen(result_fd, "w", encoding="utf-8")
    outcome: dict[str, Any]
    out_of_memory = False
    try:
        request = json.loads(sys.stdin.buffer.read(_MAX_REQUEST_BYTES))
        _apply_limits(int(request["memory_bytes"]), int(request["cpu_seconds"]))
        outcome = {"ok": True, "report": check(request)}
    except MemoryError:
        # Build nothing here: the traceback still holds the frames (and the model) alive.
        out_of_memory = True
        outcome = {}
    except HeimdallError as exc:
        outcome = _failure(exc)
    except Exception as exc:  # anything the checks did not anticipate: refuse, with its type
        message = trim_message(f"the model could not be checked: {type(exc).__name__}: {exc}")
        outcome = _failure(InvalidOnnx(message))
    if out_of_memory:
        outcome = _failure(_out_of_memory())
    out.write(json.dumps(outcome, allow_nan=False) + "\n")
    out.flush()
    return 0


def _apply_limits(memory_bytes: int, cpu_seconds: int) -> None:
    """Hold this process to ``memory_bytes`` of address space and ``cpu_seconds`` of CPU time."""
    WorkerState.memory_bytes = memory_bytes
    try:
        _lower(resource.RLIMIT_CORE, 0)  # a crash must not leave a core file of the model behind
        _lower(resource.RLIMIT_AS, memory_bytes)
        # SIGXCPU at the soft limit, SIGKILL a little later if it is ignored.
        _lower(resource.RLIMIT_CPU, cpu_seconds, hard=cpu_seconds + 2)
    except (ValueError, OSError) as exc:
        raise ConfigurationError(f"cannot apply the structural check's resource limits: {exc}") from None


def _lower(which: int, soft: int, *, hard: int | None = None) -> None:
    _, current_hard = resource.getrlimit(which)
    hard = soft if hard is None else hard
    if current_hard != resource.RLIM_INFINITY:
        hard = min(hard, current_hard)
        soft = min(soft, current_hard)
    resource.setrlimit(which, (soft, hard))


def _out_of_memory() -> GraphTooComplex:
    mib = WorkerState.memory_bytes / (1024 * 1024)
    return GraphTooComplex(
        f"checking the model needs more memory than the structural check's limit of {mib:.0f} MiB "
        f"(structural_memory_bytes); it ran out while {WorkerState.stage}",
        limit="structural_memory_bytes",
        stage=WorkerState.stage,
    )


def _failure(exc: HeimdallError) -> dict[str, Any]:
    return {
        "ok": False,
        "code": exc.code,
        "message": exc.message,
        "field": exc.field,
        "details": _jsonable(exc.details),
    }


def _jsonable(details: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, str | int | float | bool | None) else str(v) for k, v in details.items()}


def trim_message(message: str) -> str:
    """One paragraph of at most ``_MAX_MESSAGE_CHARS`` characters (checker messages can be long)."""
    text = " ".join(message.split())
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


__all__ = ["WorkerState", "serve", "trim_message"]
