"""Checkpoints as users save them: any file name, training-loop and Lightning containers, prefixes.

Every file is written for real with ``torch.save`` under the name a user (or Lightning) gives it.
"""

from __future__ import annotations

import argparse
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import torch
from torch import nn

from heimdall.contracts.jobs import WeightsChoice
from heimdall.contracts.manifest import parse_manifest
from heimdall.errors import AmbiguousWeights, InvalidCheckpoint, StateDictMismatch, UnsafeCheckpoint
from heimdall_batch.architectures import build_mlp
from heimdall_batch.loading import load_checkpoint
from heimdall_batch.weights import build_from_checkpoint


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


def _rewritten(
    tmp_path: Path, name: str, change: Callable[[int, zipfile.ZipInfo], zipfile.ZipInfo | str]
) -> Path:
    """A ``torch.save`` file named ``name``, copied member by member with ``change`` applied to each
    (given its index and entry; it returns the entry to write, or a new member name)."""
    source = tmp_path / name
    torch.save(weights(), source)
    target = tmp_path / "hostile.pt"
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for index, info in enumerate(src.infolist()):
            dst.writestr(change(index, info), src.read(info))
    return target


@pytest.mark.parametrize("prefix", ["..", ".", "", "a\\b", "C:", "x" * 256])
def test_unsafe_top_level_folders_are_still_refused(tmp_path: Path, prefix: str) -> None:
    hostile = _rewritten(tmp_path, "model.pt", lambda _, info: prefix + "/" + info.filename.partition("/")[2])
    with pytest.raises(InvalidCheckpoint):
        load_checkpoint(hostile)


def test_a_link_member_is_refused(tmp_path: Path) -> None:
    def link(_: int, info: zipfile.ZipInfo) -> zipfile.ZipInfo:
        if info.filename.endswith("/version"):
            info.external_attr = 0o120777 << 16
        return info

    with pytest.raises(InvalidCheckpoint, match="symbolic link"):
        load_checkpoint(_rewritten(tmp_path, "model (1).pt", link))


def test_two_top_level_folders_are_refused(tmp_path: Path) -> None:
    def split(index: int, info: zipfile.ZipInfo) -> str:
        return ("model=1" if index % 2 else "other") + "/" + info.filename.partition("/")[2]

    with pytest.raises(InvalidCheckpoint, match="one top-level folder"):
        load_checkpoint(_rewritten(tmp_path, "model=1.pt", split))


# --- B: training-loop and Lightning containers, wrapper prefixes ----------------------------------

MLP_MANIFEST: dict[str, Any] = {
    "model_name": "tiny-mlp",
    "version": "1",
    "architecture": "mlp",
    "architecture_kwargs": {"in_features": 3, "hidden": [4], "out_features": 2},
    "input_shape": [1, 3],
    "output_names": ["logits"],
}


def mlp_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {key: value.clone() for key, value in build_mlp(in_features=3, hidden=[4], out_features=2)
            .state_dict().items()}


def prefixed(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + key: value for key, value in state_dict.items()}


def lightning_checkpoint(state_dict: dict[str, torch.Tensor], hyper_parameters: Any) -> dict[str, Any]:
    """What ``Trainer.save_checkpoint`` writes (lightning itself is not needed to write it)."""
    return {
        "epoch": 1,
        "global_step": 4,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": prefixed(state_dict, "model."),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 2}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_path": "", "best_model_score": None}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(4.0), "exp_avg": torch.zeros(4, 3)}},
                              "param_groups": [{"lr": 0.001, "params": [0, 1, 2, 3]}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper_parameters,
    }


def choose(path: Path, **manifest: Any) -> tuple[nn.Module, WeightsChoice]:
    """As the pipeline does with a sidecar manifest."""
    parsed = parse_manifest({**MLP_MANIFEST, **manifest})
    return build_from_checkpoint(parsed, load_checkpoint(path, state_dict_key=parsed.state_dict_key))


def same_weights(model: nn.Module, want: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert torch.equal(got[key], tensor), key


@pytest.mark.parametrize(
    "hyper_parameters",
    [
        pytest.param({"lr": 0.001, "hidden": [4], "name": "tiny", "dropout": None}, id="plain"),
        pytest.param(argparse.Namespace(lr=0.001, layers=[4]), id="namespace"),
    ],
)
def test_lightning_checkpoint_converts(tmp_path: Path, hyper_parameters: Any) -> None:
    want = mlp_weights()
    path = tmp_path / "epoch=1-step=4.ckpt"
    torch.save(lightning_checkpoint(want, hyper_parameters), path)
    model, choice = choose(path)
    same_weights(model, want)
    assert choice == WeightsChoice(key_path="state_dict", stripped_prefix="model.")
    assert choice.describe() == "'state_dict', prefix 'model.' removed"


def test_other_globals_in_hyper_parameters_are_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "epoch=1-step=4.ckpt"
    torch.save(lightning_checkpoint(mlp_weights(), {"root": PurePosixPath("/data")}), path)
    with pytest.raises(UnsafeCheckpoint, match="PurePosixPath"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("obj", "key_path", "prefix"),
    [
        pytest.param(lambda sd: prefixed(sd, "module."), "", "module.", id="data-parallel"),
        pytest.param(lambda sd: prefixed(sd, "_orig_mod."), "", "_orig_mod.", id="torch-compile"),
        pytest.param(lambda sd: {"model_state_dict": prefixed(sd, "module._orig_mod."), "epoch": 3},
                     "model_state_dict", "module._orig_mod.", id="ddp-of-compiled"),
        pytest.param(lambda sd: {"model": {"module": sd}, "optimizer": {"state": {}}}, "model.module", "",
                     id="nested-module"),
        pytest.param(lambda sd: {"state_dict": prefixed(sd, "net.")}, "state_dict", "net.",
                     id="net-attribute"),
        pytest.param(lambda sd: {"model": sd, "model_ema": {"w": torch.ones(1)}}, "model", "",
                     id="only-one-fits"),
        pytest.param(lambda sd: {"ema": prefixed(sd, "module.")}, "ema", "module.", id="ema-only"),
    ],
)
def test_wrapper_prefixes_and_containers_are_found(
    tmp_path: Path, obj: Callable[[dict[str, torch.Tensor]], Any], key_path: str, prefix: str
) -> None:
    want = mlp_weights()
    path = tmp_path / "model (1).pt"
    torch.save(obj(want), path)
    model, choice = choose(path)
    same_weights(model, want)
    assert (choice.key_path, choice.stripped_prefix) == (key_path, prefix)
    assert choice.ema == (key_path == "ema")
    assert choice.chosen_by == "detected"


def test_model_and_model_ema_are_ambiguous_until_the_manifest_says(tmp_path: Path) -> None:
    trained, averaged = mlp_weights(0), mlp_weights(1)
    path = tmp_path / "last.pt"
    torch.save({"model": trained, "model_ema": prefixed(averaged, "module."), "epoch": 9}, path)
    with pytest.raises(AmbiguousWeights) as info:
        choose(path)
    assert info.value.code == "AMBIGUOUS_WEIGHTS" and info.value.exit_code == 3
    assert "'model'" in info.value.message and "'model_ema', prefix 'module.' removed" in info.value.message
    assert info.value.details["candidates"] == [
        {"key_path": "model", "stripped_prefix": ""},
        {"key_path": "model_ema", "stripped_prefix": "module."},
    ]
    model, choice = choose(path, state_dict_key="model_ema")
    same_weights(model, averaged)
    assert choice == WeightsChoice(
        key_path="model_ema", stripped_prefix="module.", ema=True, chosen_by="manifest"
    )
    model, choice = choose(path, state_dict_key="model", strip_prefix="")
    same_weights(model, trained)


def test_state_dict_key_may_name_any_dict_and_strip_prefix_is_exact(tmp_path: Path) -> None:
    want = mlp_weights()
    path = tmp_path / "run.pt"
    torch.save({"checkpoint": {"weights": prefixed(want, "backbone.")}}, path)
    model, choice = choose(path, state_dict_key="checkpoint.weights", strip_prefix="backbone.")
    same_weights(model, want)
    assert choice.key_path == "checkpoint.weights"
    with pytest.raises(InvalidCheckpoint, match=r"no entry 'checkpoint\.nothing'"):
        choose(path, state_dict_key="checkpoint.nothing")
    with pytest.raises(InvalidCheckpoint, match=r"strip_prefix 'model\.'"):
        choose(path, state_dict_key="checkpoint.weights", strip_prefix="model.")


def test_nothing_fits_reports_the_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {"model.other.weight": torch.ones(2)}}, path)
    with pytest.raises(StateDictMismatch, match="unexpected key"):
        choose(path)


def test_timm_state_dict_ema_beside_state_dict_is_ambiguous(tmp_path: Path) -> None:
    # timm's train.py saves {"state_dict": ..., "state_dict_ema": ...}: both fit, the job does not guess.
    trained, averaged = mlp_weights(0), mlp_weights(1)
    path = tmp_path / "checkpoint-9.pth.tar"
    torch.save({"state_dict": trained, "state_dict_ema": averaged, "epoch": 9}, path)
    with pytest.raises(AmbiguousWeights) as info:
        choose(path)
    assert [c["key_path"] for c in info.value.details["candidates"]] == ["state_dict", "state_dict_ema"]
    model, choice = choose(path, state_dict_key="state_dict_ema")
    same_weights(model, averaged)
    assert (choice.key_path, choice.ema, choice.chosen_by) == ("state_dict_ema", True, "manifest")
