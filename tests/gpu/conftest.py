"""Tests under tests/gpu need a CUDA device; without one they are skipped and say so."""

from __future__ import annotations

from pathlib import Path

import pytest

GPU_TESTS = Path(__file__).parent


def _cuda_available() -> bool:
    # Imported here, not at module level: collecting the other suites must not load torch.
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test in this directory `gpu`, and skip them all when there is no CUDA device."""
    gpu_items = [item for item in items if item.path.is_relative_to(GPU_TESTS)]
    if not gpu_items:
        return
    skip = None if _cuda_available() else pytest.mark.skip(reason="no CUDA device")
    for item in gpu_items:
        item.add_marker(pytest.mark.gpu)
        if skip is not None:
            item.add_marker(skip)
