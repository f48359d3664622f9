"""Latency benchmarks: median wall time per batch size, with the hardware named."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Iterable

import numpy as np
import torch

from heimdall.contracts.jobs import BenchmarkReport
from heimdall.contracts.manifest import Manifest
from heimdall_batch.parity import Inputs, Runner
from heimdall_batch.specs import IOSpec, random_inputs

BENCHMARK_BATCH_SIZES = (1, 32)


def median_latency_ms(
    run: Runner, inputs: Inputs, *, runs: int = 50, warmup: int = 5, budget_s: float = 3.0
) -> float:
    """Median latency of ``run(inputs)`` in milliseconds (stops early once ``budget_s`` is spent)."""
    for _ in range(warmup):
        run(inputs)
    times = []
    deadline = time.perf_counter() + budget_s
    for _ in range(runs):
        start = time.perf_counter()
        run(inputs)
        times.append((time.perf_counter() - start) * 1000.0)
        if time.perf_counter() > deadline and len(times) >= 5:
            break
    return statistics.median(times)


def latency_by_batch(
    run: Runner,
    spec: IOSpec,
    manifest: Manifest | None = None,
    *,
    runs: int = 30,
    batch_sizes: Iterable[int] = BENCHMARK_BATCH_SIZES,
) -> dict[str, float]:
    """Median latency (ms) of ``run`` per batch size (only the fixed one without a dynamic batch axis)."""
    rng = np.random.default_rng(1)
    return {
        str(b): round(median_latency_ms(run, random_inputs(spec, b, rng, manifest), runs=runs), 4)
        for b in spec.batch_sizes(batch_sizes)
    }


def hardware_name() -> str:
    """What the benchmark ran on: the GPU when CUDA is in use, else the CPU model and core count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores (CPU)"


def benchmark(
    torch_run: Runner | None,
    onnx_run: Runner,
    spec: IOSpec,
    *,
    manifest: Manifest | None = None,
    batch_sizes: Iterable[int] = BENCHMARK_BATCH_SIZES,
    runs: int = 30,
) -> BenchmarkReport:
    """Median latency of PyTorch eager and ONNX Runtime at each batch size, and the speedup.

    Without ``torch_run`` (a model that came as a bundle) only ONNX Runtime is timed.
    """
    torch_ms: dict[str, float] = {}
    if torch_run is not None:
        torch_ms = latency_by_batch(torch_run, spec, manifest, runs=runs, batch_sizes=batch_sizes)
    onnx_ms = latency_by_batch(onnx_run, spec, manifest, runs=runs, batch_sizes=batch_sizes)
    speedup = {k: round(torch_ms[k] / onnx_ms[k], 3) if onnx_ms[k] > 0 else 0.0 for k in torch_ms}
    return BenchmarkReport(
        hardware=hardware_name(),
        provider="CPUExecutionProvider",
        torch_ms=torch_ms,
        onnx_ms=onnx_ms,
        speedup=speedup,
        runs=runs,
    )
