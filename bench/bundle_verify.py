"""Benchmark the bundle integrity pass against sha256 and against a naive reader.

Builds a real ``.heimdall`` bundle around an ONNX model of about ``--onnx-mb`` MiB (canonical metadata,
written by the project's writer) in a temporary directory, then measures in one run:

* the integrity pass, :func:`heimdall.bundle.reader.read_bundle` on the file: ONNX MiB decoded and
  hashed per second (median of ``--repeat`` runs after a warm-up);
* ``hashlib.sha256`` over the same ONNX bytes held in memory, same repetitions, interleaved with the
  runs above so that background load hits both alike; the ratio of the two medians;
* a naive reader (``json.load``, ``base64.b64decode``, ``hashlib.sha256``), timed the same way;
* the peak memory of a child process doing one integrity pass, and of one doing the naive read:
  ``VmHWM`` after the pass minus ``VmRSS`` after the imports, in MiB.

It prints a table, then one JSON object on the last line. Progress goes to stderr. The file is read
from the page cache (it was just written), so this measures the pass itself, not the disk.

    .venv/bin/python bench/bundle_verify.py [--onnx-mb N] [--repeat R] [--keep DIR]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pybase64

from heimdall.bundle.reader import parse_metadata, read_bundle
from heimdall.bundle.writer import write_bundle
from heimdall.settings import MIB, BundleLimits
from heimdall.testing.sample_bundles import sample_bundle_metadata
from heimdall.testing.sample_models import padded_onnx

#: The issue's targets, stated for a 100 MB model.
TARGET_RATIO_TO_SHA256 = 0.7
TARGET_PEAK_RSS_DELTA_MIB = 64.0
REFERENCE_ONNX_MIB = 100.0
BUNDLE_NAME = "bench.heimdall"

# The child process: import what the pass needs, take the resident size as the baseline, run one pass
# and report the high-water mark. Both modes import the same modules so the baselines compare.
# Writing "5" to /proc/self/clear_refs resets VmHWM to the current RSS (Linux >= 4.0), so the peak
# is the pass's own and not the imports'; where that is refused, VmHWM still bounds it from above.
# Not getrusage's ru_maxrss: it survives fork+exec, so a child reports the parent's peak (about
# 530 MiB here, the parent holding the model) rather than its own.
_CHILD = r"""
import base64, gc, hashlib, json, sys, time
import pybase64
from heimdall.bundle.reader import read_bundle
from heimdall.settings import BundleLimits

def status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field + " not in /proc/self/status")

mode, path, max_onnx = sys.argv[1], sys.argv[2], int(sys.argv[3])
limits = BundleLimits(max_onnx_bytes=max_onnx)
gc.collect()
try:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    hwm_reset = True
except OSError:
    hwm_reset = False
baseline = status_kib("VmRSS")
start = time.perf_counter()
if mode == "verify":
    result = read_bundle(path, limits=limits)
    sha, size = result.onnx_sha256, result.onnx_size_bytes
else:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    onnx = base64.b64decode(doc["model"]["onnx_model_base64"])
    sha, size = hashlib.sha256(onnx).hexdigest(), len(onnx)
    if doc.get("integrity", {}).get("onnx_sha256") != sha:
        raise SystemExit("naive reader: checksum mismatch")
elapsed = time.perf_counter() - start
print(json.dumps({
    "baseline_kib": baseline, "hwm_kib": status_kib("VmHWM"), "rss_after_kib": status_kib("VmRSS"),
    "hwm_reset": hwm_reset,
    "seconds": elapsed, "sha256": sha, "size": size,
}))
"""


@dataclass(frozen=True)
class ChildPeak:
    """Memory of one child process doing one read of the bundle."""

    baseline_mib: float
    peak_mib: float
    hwm_reset: bool
    seconds: float

    @property
    def delta_mib(self) -> float:
        """Peak resident memory above the post-import baseline."""
        return self.peak_mib - self.baseline_mib


@dataclass(frozen=True)
class Timing:
    """Throughputs of repeated runs, in MiB of ONNX per second."""

    seconds: list[float]
    #: Process CPU time (all threads) of each run: above the wall time when threads overlapped.
    cpu_seconds: list[float]
    onnx_bytes: int

    def _rate(self, seconds: float) -> float:
        return self.onnx_bytes / MIB / seconds

    @property
    def median(self) -> float:
        return self._rate(statistics.median(self.seconds))

    @property
    def best(self) -> float:
        return self._rate(min(self.seconds))

    @property
    def cpu_per_wall(self) -> float:
        """Median over runs of CPU time / wall time: about 1 when only one core was at work."""
        return statistics.median(c / w for c, w in zip(self.cpu_seconds, self.seconds, strict=True))


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    target_bytes = int(args.onnx_mb * MIB)
    if args.keep is not None:
        workdir = Path(args.keep)
        workdir.mkdir(parents=True, exist_ok=True)
        report = _run(workdir, target_bytes, args.repeat)
        _log(f"kept {workdir / BUNDLE_NAME}")
    else:
        with tempfile.TemporaryDirectory(prefix="heimdall-bench-") as tmp:
            report = _run(Path(tmp), target_bytes, args.repeat)
    _print_table(report)
    print(json.dumps(report, sort_keys=False))
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--onnx-mb",
        type=float,
        default=REFERENCE_ONNX_MIB,
        help="size of the embedded ONNX model in MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="timed runs of each measurement, after one warm-up (default: %(default)s)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        default=None,
        help="write the bundle into DIR and keep it (default: a temporary directory)",
    )
    args = parser.parse_args(argv)
    if args.onnx_mb <= 0:
        parser.error("--onnx-mb must be positive")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def _run(workdir: Path, target_bytes: int, repeat: int) -> dict[str, Any]:
    load_before = os.getloadavg()
    path = workdir / BUNDLE_NAME
    onnx, expected_sha = _build_bundle(path, target_bytes)
    limits = BundleLimits(max_onnx_bytes=max(BundleLimits().max_onnx_bytes, len(onnx)))

    def verify() -> None:
        result = read_bundle(path, limits=limits)
        if result.onnx_sha256 != expected_sha or result.onnx_size_bytes != len(onnx):
            raise RuntimeError("read_bundle disagrees with the model that was written")

    def sha256() -> None:
        hashlib.sha256(onnx).hexdigest()

    def naive() -> None:
        with path.open(encoding="utf-8") as fh:
            doc = json.load(fh)
        decoded = base64.b64decode(doc["model"]["onnx_model_base64"])
        if hashlib.sha256(decoded).hexdigest() != expected_sha:
            raise RuntimeError("the naive reader disagrees with the model that was written")

    _log(f"timing: 1 warm-up + {repeat} runs each of read_bundle, sha256 and the naive reader, interleaved")
    timings = _time_interleaved({"verify": verify, "sha256": sha256, "naive": naive}, repeat, len(onnx))
    _log("peak memory: one child process per reader")
    peak = _child_peak("verify", path, limits.max_onnx_bytes, expected_sha)
    naive_peak = _child_peak("naive", path, limits.max_onnx_bytes, expected_sha)
    load_after = os.getloadavg()

    onnx_mib = len(onnx) / MIB
    bundle_mib = path.stat().st_size / MIB
    ratio = timings["verify"].median / timings["sha256"].median
    at_reference = abs(onnx_mib - REFERENCE_ONNX_MIB) <= 0.5
    ratio_ok = ratio >= TARGET_RATIO_TO_SHA256
    peak_ok = peak.delta_mib <= TARGET_PEAK_RSS_DELTA_MIB
    return {
        "units": "MiB (2**20 bytes); throughputs are ONNX (decoded) MiB per second, median of repeats",
        "onnx_mb": round(onnx_mib, 3),
        "onnx_bytes": len(onnx),
        "bundle_mb": round(bundle_mib, 3),
        "repeats": repeat,
        "verify_mb_per_s": round(timings["verify"].median, 1),
        "verify_best_mb_per_s": round(timings["verify"].best, 1),
        "verify_bundle_mb_per_s": round(timings["verify"].median * bundle_mib / onnx_mib, 1),
        "sha256_mb_per_s": round(timings["sha256"].median, 1),
        "sha256_best_mb_per_s": round(timings["sha256"].best, 1),
        "ratio_to_sha256": round(ratio, 3),
        "verify_cpu_per_wall": round(timings["verify"].cpu_per_wall, 2),
        "ratio_best_to_best": round(timings["verify"].best / timings["sha256"].best, 3),
        "naive_mb_per_s": round(timings["naive"].median, 1),
        "naive_best_mb_per_s": round(timings["naive"].best, 1),
        "peak_rss_delta_mb": round(peak.delta_mib, 1),
        "naive_peak_rss_delta_mb": round(naive_peak.delta_mib, 1),
        "child_baseline_rss_mb": round(peak.baseline_mib, 1),
        "naive_child_baseline_rss_mb": round(naive_peak.baseline_mib, 1),
        "child_hwm_reset": peak.hwm_reset and naive_peak.hwm_reset,
        "child_verify_seconds": round(peak.seconds, 3),
        "child_naive_seconds": round(naive_peak.seconds, 3),
        "runs_seconds": {name: [round(s, 4) for s in t.seconds] for name, t in timings.items()},
        "targets": {
            "ratio_to_sha256_min": TARGET_RATIO_TO_SHA256,
            "peak_rss_delta_mb_max": TARGET_PEAK_RSS_DELTA_MIB,
            "stated_for_onnx_mb": REFERENCE_ONNX_MIB,
        },
        "targets_met": {
            "ratio_to_sha256": ratio_ok,
            "peak_rss_delta_mb": peak_ok,
            "all": ratio_ok and peak_ok,
            "at_reference_size": at_reference,
        },
        "machine": _machine(load_before, load_after),
    }


def _build_bundle(path: Path, target_bytes: int) -> tuple[bytes, str]:
    """Write a canonical bundle around a padded ONNX model of ``target_bytes``; return (onnx, sha256)."""
    _log(f"building a {target_bytes / MIB:.1f} MiB ONNX model")
    onnx = padded_onnx(target_bytes)
    graph_input, graph_output = _graph_shapes(onnx)
    # The metadata describes the padded model (not the localization net the sample metadata is for),
    # so the bundle is one the structural pass would accept too.
    doc = sample_bundle_metadata(
        onnx,
        model={
            "model_name": "bench-padded",
            "architecture": "padded",
            "input_shape": graph_input,
            "output_shape": [graph_output],
        },
    )
    bundle, _ = parse_metadata(doc)
    _log(f"writing {path}")
    written = write_bundle(bundle, onnx, path)
    expected = hashlib.sha256(onnx).hexdigest()
    if written.onnx_sha256 != expected or written.onnx_size_bytes != len(onnx):
        raise RuntimeError("write_bundle's integrity block does not match the model it was given")
    return onnx, expected


def _graph_shapes(onnx_bytes: bytes) -> tuple[list[int | str], list[int | str]]:
    """The first graph input's and output's shapes, symbolic dims by name."""
    import onnx  # only the build step needs it

    model = onnx.load_model_from_string(onnx_bytes)

    def shape(value: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return shape(model.graph.input[0]), shape(model.graph.output[0])


def _time_interleaved(runs: dict[str, Callable[[], None]], repeat: int, onnx_bytes: int) -> dict[str, Timing]:
    """One warm-up of each, then ``repeat`` rounds running each once, so load spikes hit all alike."""
    for run in runs.values():
        run()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: Timing(wall[name], cpu[name], onnx_bytes) for name in runs}


def _child_peak(mode: str, path: Path, max_onnx_bytes: int, expected_sha: str) -> ChildPeak:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path), str(max_onnx_bytes)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} child failed ({proc.returncode}):\n{proc.stderr.strip()}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["sha256"] != expected_sha:
        raise RuntimeError(f"the {mode} child computed a different sha256")
    return ChildPeak(
        baseline_mib=out["baseline_kib"] / 1024,
        peak_mib=out["hwm_kib"] / 1024,
        hwm_reset=out["hwm_reset"],
        seconds=out["seconds"],
    )


LoadAvg = tuple[float, float, float]


def _machine(load_before: LoadAvg, load_after: LoadAvg) -> dict[str, Any]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "pybase64": pybase64.get_version(),
        "openssl": _openssl_version(),
        "loadavg_1m_before": round(load_before[0], 2),
        "loadavg_1m_after": round(load_after[0], 2),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _openssl_version() -> str:
    import ssl  # hashlib's sha256 comes from OpenSSL: its version explains sha256's speed

    return ssl.OPENSSL_VERSION


def _print_table(r: dict[str, Any]) -> None:
    m = r["machine"]
    met = r["targets_met"]

    def mark(ok: bool) -> str:
        return "met" if ok else "NOT met"

    def rate(key: str) -> str:
        return f"{r[key + '_mb_per_s']:8.1f} MiB/s  [{r[key + '_best_mb_per_s']:.1f}]"

    rows = [
        ("ONNX model", f"{r['onnx_mb']:.1f} MiB ({r['onnx_bytes']} bytes)"),
        ("bundle file", f"{r['bundle_mb']:.1f} MiB"),
        ("repeats", f"{r['repeats']} (+1 warm-up), interleaved; median [best]"),
        ("read_bundle (integrity pass)", rate("verify") + "  ONNX MiB decoded+hashed"),
        ("hashlib.sha256 in memory", rate("sha256")),
        ("naive json+b64decode+sha256", rate("naive")),
        (
            "read_bundle CPU time / wall time",
            f"{r['verify_cpu_per_wall']:8.2f}        (its decode and hash threads overlapped if > 1)",
        ),
        (
            "ratio read_bundle / sha256",
            f"{r['ratio_to_sha256']:8.3f}        target >= {TARGET_RATIO_TO_SHA256}: "
            f"{mark(met['ratio_to_sha256'])}",
        ),
        (
            "child peak RSS delta, read_bundle",
            f"{r['peak_rss_delta_mb']:8.1f} MiB    target <= {TARGET_PEAK_RSS_DELTA_MIB:g}: "
            f"{mark(met['peak_rss_delta_mb'])}",
        ),
        ("child peak RSS delta, naive", f"{r['naive_peak_rss_delta_mb']:8.1f} MiB"),
        (
            "child baseline RSS after imports",
            f"{r['child_baseline_rss_mb']:.1f} / {r['naive_child_baseline_rss_mb']:.1f} MiB (verify / naive)",
        ),
        (
            "targets",
            f"stated for a {REFERENCE_ONNX_MIB:g} MiB model"
            + ("" if met["at_reference_size"] else "; this run is not one"),
        ),
        (
            "machine",
            f"{m['cpu_model']}, {m['cores']} cores, Python {m['python']}, "
            f"load {m['loadavg_1m_before']} -> {m['loadavg_1m_after']}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _log(message: str) -> None:
    print(f"[bundle_verify] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
