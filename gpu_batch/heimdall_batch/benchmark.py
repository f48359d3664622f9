"""Latency benchmarks: median wall time per batch size, with the hardware named."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Iterable

import numpy as np
import torch

from heimdall.conversion import BenchmarkReport
from heimdall.manifest import Manifest
from heimdall_batch.parity import Inputs, Runner
from heimdall_batch.specs import IOSpec, random_inputs

BENCHMARK_BATCH_SIZES = (1, 32)


def median_latency_ms(
    run: Runner, inputs: Inputs, *, runs: int = 50, warmup: int = 5, budget_s: float = 5.0
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
    torch_run: Runner,
    onnx_run: Runner,
    spec: IOSpec,
    *,
    manifest: Manifest | None = None,
    batch_sizes: Iterable[int] = BENCHMARK_BATCH_SIZES,
    runs: int = 50,
) -> BenchmarkReport:
    """Median latency of PyTorch eager and ONNX Runtime at each batch size, and the speedup."""
    rng = np.random.default_rng(1)
    torch_ms: dict[str, float] = {}
    onnx_ms: dict[str, float] = {}
    for batch_size in batch_sizes:
        inputs = random_inputs(spec, batch_size, rng, manifest)
        torch_ms[str(batch_size)] = round(median_latency_ms(torch_run, inputs, runs=runs), 4)
        onnx_ms[str(batch_size)] = round(median_latency_ms(onnx_run, inputs, runs=runs), 4)
    speedup = {k: round(torch_ms[k] / onnx_ms[k], 3) if onnx_ms[k] > 0 else 0.0 for k in torch_ms}
    return BenchmarkReport(
        hardware=hardware_name(),
        provider="CPUExecutionProvider",
        torch_ms=torch_ms,
        onnx_ms=onnx_ms,
        speedup=speedup,
        runs=runs,
    )
