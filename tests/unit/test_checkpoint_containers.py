"""Checkpoints as users save them: any file name, training-loop and Lightning containers, prefixes.

Every file is written for real with ``torch.save`` under the name a user (or Lightning) gives it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import torch

from heimdall.errors import InvalidCheckpoint
from heimdall_batch.loading import load_checkpoint


def weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "fc.weight": torch.randn(2, 3, generator=generator),
        "fc.bias": torch.randn(2, generator=generator),
    }


# --- A: any file name -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("epoch=1-step=4.ckpt", "epoch=1-step=4"),
        ("model (1).pt", "model (1)"),
        ("ckpt_epoch=10.pt", "ckpt_epoch=10"),
        ("weights,v2;final@best.pth", "weights,v2;final@best"),
        ("a.b.c.pt", "a.b.c"),
    ],
)
def test_any_file_name_loads(tmp_path: Path, name: str, folder: str) -> None:
    path = tmp_path / name
    torch.save(weights(), path)
    with zipfile.ZipFile(path) as archive:  # torch names the folder after the file
        assert {member.partition("/")[0] for member in archive.namelist()} == {folder}
    loaded = load_checkpoint(path)
    assert set(loaded.state_dict) == {"fc.weight", "fc.bias"}


def _copy_with_prefix(source: Path, target: Path, prefix: str) -> Path:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            dst.writestr(prefix + "/" + info.filename.partition("/")[2], src.read(info))
    return target


@pytest.mark.parametrize("prefix", ["..", ".", "", "a\\b", "C:", "x" * 256])
def test_unsafe_top_level_folders_are_still_refused(tmp_path: Path, prefix: str) -> None:
    source = tmp_path / "model.pt"
    torch.save(weights(), source)
    hostile = _copy_with_prefix(source, tmp_path / "hostile.pt", prefix)
    with pytest.raises(InvalidCheckpoint):
        load_checkpoint(hostile)


def test_a_link_member_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "model (1).pt"
    torch.save(weights(), source)
    hostile = tmp_path / "link.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(hostile, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith("/version"):
                info.external_attr = (0o120777 << 16)
            dst.writestr(info, src.read(info))
    with pytest.raises(InvalidCheckpoint, match="symbolic link"):
        load_checkpoint(hostile)


def test_two_top_level_folders_are_refused(tmp_path: Path) -> None:
    source = tmp_path / "model=1.pt"
    torch.save(weights(), source)
    hostile = tmp_path / "two.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(hostile, "w") as dst:
        for index, info in enumerate(src.infolist()):
            folder = "model=1" if index % 2 else "other"
            dst.writestr(folder + "/" + info.filename.partition("/")[2], src.read(info))
    with pytest.raises(InvalidCheckpoint, match="one top-level folder"):
        load_checkpoint(hostile)
