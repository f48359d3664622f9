"""Safe checkpoint loading (DESIGN §4, BAD_INPUTS "Checkpoints").

Every hostile file here is written for real (``torch.save``, ``pickle.dump``, ``safetensors``,
``zipfile``, or bytes by hand) into ``tmp_path`` and handed to :func:`load_checkpoint`. Gadget
tests plant a marker-file side effect, assert it did not happen, and then prove the gadget was live
by unpickling it the unsafe way on purpose. Structural zip refusals also prove torch never saw the
file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import pickle
import shlex
import struct
import tarfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from heimdall.contracts.manifest import parse_manifest
from heimdall.errors import (
    HeimdallError,
    InvalidCheckpoint,
    InvalidManifest,
    UnsafeCheckpoint,
    UnsafeEnvironment,
)
from heimdall_batch import loading
from heimdall_batch.loading import LoadedCheckpoint, load_checkpoint, refuse_unsafe_environment

MANIFEST: dict[str, Any] = {
    "model_name": "localization-net",
    "version": "1.0.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "output_names": ["positions", "uncertainties"],
}


# --- helpers --------------------------------------------------------------------------------------


def state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "conv.bias": torch.randn(4, generator=generator),
        "bn.num_batches_tracked": torch.tensor(7),
        "head.weight": torch.randn(2, 4, generator=generator).half(),
    }


def same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for key, tensor in want.items():
        assert got[key].dtype == tensor.dtype, key
        assert torch.equal(got[key], tensor), key
        assert type(got[key]) is torch.Tensor, key


def refused(
    path: Path, error: type[HeimdallError], *fragments: str, **kwargs: Any
) -> HeimdallError:
    """Load ``path``, expect exactly ``error`` with exit code 3 and every fragment in the message."""
    with pytest.raises(HeimdallError) as info:
        load_checkpoint(path, **kwargs)
    exc = info.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    assert exc.code == error.code
    assert getattr(exc, "exit_code", None) == 3
    for fragment in fragments:
        assert fragment in exc.message, exc.message
    return exc


def torch_saved(tmp_path: Path, obj: Any, name: str = "model.pt", **kwargs: Any) -> Path:
    path = tmp_path / name
    torch.save(obj, path, **kwargs)
    return path


def rewrite_zip(
    source: Path,
    target: Path,
    *,
    drop: Callable[[str], bool] = lambda name: False,
    add: list[tuple[str, bytes]] | None = None,
    replace: dict[str, bytes] | None = None,
) -> Path:
    """Copy a torch.save zip member by member, dropping, replacing or adding members."""
    replace = replace or {}
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names some tests write
        for info in src.infolist():
            if drop(info.filename):
                continue
            dst.writestr(info.filename, replace.get(info.filename, src.read(info)))
        for name, data in add or []:
            dst.writestr(name, data)
    return target


def prefix_of(path: Path) -> str:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()[0].partition("/")[0]


def safetensors_file(
    tmp_path: Path,
    header: dict[str, Any] | bytes,
    data: bytes = b"",
    *,
    length: int | None = None,
    name: str = "model.safetensors",
) -> Path:
    """A safetensors file written by hand, header and all, so it can be wrong in any way."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / name
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def f32(shape: list[int], begin: int) -> dict[str, Any]:
    count = 1
    for dim in shape:
        count *= dim
    return {"dtype": "F32", "shape": shape, "data_offsets": [begin, begin + 4 * count]}


@pytest.fixture
def torch_load_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Record (and fail) any call into torch's own loaders, for refusals that must come first."""
    calls: list[str] = []

    def forbidden_load(*args: Any, **kwargs: Any) -> Any:
        calls.append("torch.load")
        raise AssertionError("torch.load must not be called for this file")

    def forbidden_scan(*args: Any, **kwargs: Any) -> Any:
        calls.append("get_unsafe_globals_in_checkpoint")
        raise AssertionError("torch must not open this file")

    monkeypatch.setattr(torch, "load", forbidden_load)
    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", forbidden_scan)
    yield calls
    assert calls == []


class Gadget:
    """Pickles as ``function(*args)``: what a hostile checkpoint runs when unpickled unsafely."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        return self.function, self.args


def gadgets(marker: Path) -> dict[str, Gadget]:
    return {
        "os.system": Gadget(os.system, f"touch {shlex.quote(str(marker))}"),
        "eval": Gadget(eval, f"__import__('pathlib').Path({str(marker)!r}).touch()"),
        "Path.write_text": Gadget(pathlib.Path.write_text, pathlib.Path(marker), "pwned"),
    }


GADGETS = ["os.system", "eval", "Path.write_text"]
GADGET_GLOBALS = {"os.system": "posix.system", "eval": "builtins.eval", "Path.write_text": "builtins.getattr"}


# --- what loads -----------------------------------------------------------------------------------


def test_safetensors_and_torch_zip_load_the_same_tensors(tmp_path: Path) -> None:
    sd = state_dict()
    save_file(sd, tmp_path / "model.safetensors")
    from_st = load_checkpoint(tmp_path / "model.safetensors")
    from_zip = load_checkpoint(torch_saved(tmp_path, sd))
    assert from_st.format == "safetensors"
    assert from_zip.format == "torch-zip"
    same_tensors(from_st.state_dict, sd)
    same_tensors(from_zip.state_dict, sd)
    for result, path in ((from_st, tmp_path / "model.safetensors"), (from_zip, tmp_path / "model.pt")):
        assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert result.size_bytes == path.stat().st_size
        assert result.embedded_manifest is None


def test_extensions_lie_and_content_decides(tmp_path: Path) -> None:
    sd = state_dict()
    # A zip named .safetensors: torch.load itself would hand that name to the safetensors library.
    zipped = load_checkpoint(torch_saved(tmp_path, sd, name="weights.safetensors"))
    assert zipped.format == "torch-zip"
    same_tensors(zipped.state_dict, sd)
    save_file(sd, tmp_path / "weights.pth")
    st = load_checkpoint(tmp_path / "weights.pth")
    assert st.format == "safetensors"
    same_tensors(st.state_dict, sd)
    save_file(sd, tmp_path / "weights.bin")
    assert load_checkpoint(tmp_path / "weights.bin").format == "safetensors"


def test_pickle_named_safetensors_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps(gadgets(marker)["os.system"], protocol=2))
    refused(path, InvalidCheckpoint, "raw pickle", "re-save it with torch.save's default zip format")
    assert not marker.exists()


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_dict_checkpoint_with_embedded_manifest(tmp_path: Path, key: str) -> None:
    sd = state_dict()
    checkpoint = {
        key: OrderedDict(sd),
        "heimdall": MANIFEST,
        "epoch": 12,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.001}]},
    }
    result = load_checkpoint(torch_saved(tmp_path, checkpoint))
    same_tensors(result.state_dict, sd)
    assert result.embedded_manifest == MANIFEST
    assert parse_manifest(result.embedded_manifest).architecture == "localization_net"


def test_flat_state_dict_may_carry_the_manifest(tmp_path: Path) -> None:
    sd = state_dict()
    result = load_checkpoint(torch_saved(tmp_path, {**sd, "heimdall": MANIFEST}))
    same_tensors(result.state_dict, sd)
    assert result.embedded_manifest == MANIFEST


def test_a_tensor_named_heimdall_is_a_weight(tmp_path: Path) -> None:
    sd = {**state_dict(), "heimdall": torch.ones(3)}
    result = load_checkpoint(torch_saved(tmp_path, sd))
    same_tensors(result.state_dict, sd)
    assert result.embedded_manifest is None


def test_parameters_become_plain_tensors(tmp_path: Path) -> None:
    module = torch.nn.Linear(3, 2)
    sd = {name: torch.nn.Parameter(p.detach().clone()) for name, p in module.named_parameters()}
    result = load_checkpoint(torch_saved(tmp_path, sd))
    same_tensors(result.state_dict, {k: v.detach() for k, v in sd.items()})


def test_safetensors_metadata_carries_the_manifest(tmp_path: Path) -> None:
    save_file(state_dict(), tmp_path / "m.safetensors", metadata={"heimdall": json.dumps(MANIFEST)})
    result = load_checkpoint(tmp_path / "m.safetensors")
    assert result.embedded_manifest == MANIFEST


def test_old_style_zip_members_load(tmp_path: Path) -> None:
    # torch 1.6-1.x wrote only data.pkl, data/N and version; a reader must not need the rest.
    sd = state_dict()
    path = torch_saved(tmp_path, sd)
    old = rewrite_zip(path, tmp_path / "old.pt", drop=lambda n: n.rpartition("/")[2].startswith(".") or
                      n.endswith(("byteorder", "serialization_id")))
    same_tensors(load_checkpoint(old).state_dict, sd)


# --- the environment ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1", "true", "0", "anything"])
def test_force_no_weights_only_load_refuses_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # Even "0": set at all, the variable shows a worker configured to weaken loading.
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", value)
    with pytest.raises(UnsafeEnvironment) as info:
        refuse_unsafe_environment()
    assert info.value.code == "UNSAFE_ENVIRONMENT"
    assert info.value.exit_code == 3
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in info.value.message
    path = torch_saved(tmp_path, state_dict())
    with pytest.raises(UnsafeEnvironment):
        load_checkpoint(path)


def test_widened_allow_list_refuses_to_start(tmp_path: Path) -> None:
    saved = torch.serialization.get_safe_globals()
    torch.serialization.add_safe_globals([datetime])
    try:
        with pytest.raises(UnsafeEnvironment) as info:
            load_checkpoint(torch_saved(tmp_path, state_dict()))
        assert "datetime.datetime" in info.value.message
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(saved)
    refuse_unsafe_environment()  # torch's own entries are not a reason to refuse


# --- pickles that run code ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", GADGETS)
def test_gadget_in_data_pickle_is_refused_without_side_effect(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "MARKER"
    gadget = gadgets(marker)[kind]
    path = torch_saved(tmp_path, {"weight": torch.ones(2), "payload": gadget})
    exc = refused(path, UnsafeCheckpoint, GADGET_GLOBALS[kind], "weights-only loading does not allow")
    assert "weights_only=False" not in exc.message  # never pass on torch's advice to load unsafely
    assert not marker.exists()
    # The gadget was live: unpickled the unsafe way, it does create the marker.
    bare = torch_saved(tmp_path, gadget, name="bare.pt")
    with zipfile.ZipFile(bare) as archive:
        pickle.loads(archive.read(f"{prefix_of(bare)}/data.pkl"))  # unsafe on purpose: the control
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol 4")
def test_gadget_the_static_scan_cannot_parse_is_refused_by_torch(tmp_path: Path) -> None:
    # Protocol 4 (FRAME, STACK_GLOBAL) defeats torch's static global scan; weights_only still refuses.
    marker = tmp_path / "MARKER"
    path = torch_saved(tmp_path, {"payload": gadgets(marker)["os.system"]}, pickle_protocol=4)
    refused(path, UnsafeCheckpoint, "weights-only loading refused", "Unsupported operand")
    assert not marker.exists()


def test_torch_load_refusal_is_reported_even_without_the_static_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "MARKER"
    path = torch_saved(tmp_path, {"payload": gadgets(marker)["eval"]})

    def scan_fails(*args: Any, **kwargs: Any) -> list[str]:
        raise RuntimeError("scanner broke")

    monkeypatch.setattr(torch.serialization, "get_unsafe_globals_in_checkpoint", scan_fails)
    # torch's unpickler names the global as it resolved it ("eval", not "builtins.eval").
    exc = refused(path, UnsafeCheckpoint, "(eval)", "weights-only loading does not allow")
    assert "weights_only" not in exc.message
    assert not marker.exists()


@pytest.mark.parametrize("member", ["extra.pkl", "data/notes", "code_cache"])
def test_gadget_in_another_member_is_refused(
    tmp_path: Path, torch_load_calls: list[str], member: str
) -> None:
    marker = tmp_path / "MARKER"
    path = torch_saved(tmp_path, state_dict())
    payload = pickle.dumps(gadgets(marker)["os.system"], protocol=2)
    hostile = rewrite_zip(path, tmp_path / "hostile.pt", add=[(f"{prefix_of(path)}/{member}", payload)])
    refused(hostile, UnsafeCheckpoint, "extra pickle", member)
    assert not marker.exists()


def test_gadget_in_a_text_member_is_refused(tmp_path: Path, torch_load_calls: list[str]) -> None:
    marker = tmp_path / "MARKER"
    path = torch_saved(tmp_path, state_dict())
    name = f"{prefix_of(path)}/version"
    hostile = rewrite_zip(
        path, tmp_path / "hostile.pt", replace={name: pickle.dumps(gadgets(marker)["eval"], protocol=2)}
    )
    refused(hostile, InvalidCheckpoint, name, "does not hold what torch.save writes")
    assert not marker.exists()


def test_unexpected_plain_member_is_refused(tmp_path: Path, torch_load_calls: list[str]) -> None:
    path = torch_saved(tmp_path, state_dict())
    hostile = rewrite_zip(path, tmp_path / "extra.pt", add=[(f"{prefix_of(path)}/README.txt", b"hello")])
    refused(hostile, InvalidCheckpoint, "member torch.save does not write", "README.txt")


def test_raw_pickle_is_refused_unread(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / "model.pth"
    with path.open("wb") as out:
        pickle.dump({"weight": torch.ones(2), "payload": gadgets(marker)["os.system"]}, out)
    refused(path, InvalidCheckpoint, "raw pickle", "torch.save's default zip format or as safetensors")
    assert not marker.exists()


def test_legacy_torch_save_format_is_refused(tmp_path: Path) -> None:
    path = torch_saved(tmp_path, state_dict(), _use_new_zipfile_serialization=False)
    refused(path, InvalidCheckpoint, "legacy", "torch.save's default zip format or as safetensors")


def test_legacy_tar_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("storages")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"\x80\x02N."))
    refused(path, InvalidCheckpoint, "tar archive", "legacy")


def test_pickled_whole_model_is_refused(tmp_path: Path) -> None:
    path = torch_saved(tmp_path, torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU()))
    refused(
        path, UnsafeCheckpoint, "pickled whole model", "model.state_dict()", "torch.nn.modules.linear.Linear"
    )


def test_non_allow_listed_global_is_refused(tmp_path: Path) -> None:
    path = torch_saved(tmp_path, {"weight": torch.ones(2), "saved_at": datetime(2024, 1, 1)})
    exc = refused(path, UnsafeCheckpoint, "datetime.datetime")
    assert exc.details["globals"] == ["datetime.datetime"]


def test_torchscript_archive_is_refused(tmp_path: Path, torch_load_calls: list[str]) -> None:
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in this torch; still what people upload
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), str(path))
    refused(path, InvalidCheckpoint, "TorchScript archive", "not a state_dict")


# --- zip archives refused before torch opens them -------------------------------------------------


@pytest.mark.parametrize(
    "member", ["../evil", "archive/../../evil", "/etc/evil", "archive\\evil", "C:/evil", "archive//evil"]
)
def test_unsafe_member_names_are_refused_first(
    tmp_path: Path, torch_load_calls: list[str], member: str
) -> None:
    path = torch_saved(tmp_path, state_dict())
    hostile = rewrite_zip(path, tmp_path / "hostile.pt", add=[(member, b"x")])
    refused(hostile, InvalidCheckpoint, "unsafe member name")


def test_duplicate_member_is_refused_first(tmp_path: Path, torch_load_calls: list[str]) -> None:
    path = torch_saved(tmp_path, state_dict())
    name = f"{prefix_of(path)}/data.pkl"
    hostile = rewrite_zip(path, tmp_path / "dup.pt", add=[(name, pickle.dumps({}, protocol=2))])
    refused(hostile, InvalidCheckpoint, "duplicate member", "data.pkl")


def test_huge_declared_size_is_refused_first(tmp_path: Path, torch_load_calls: list[str]) -> None:
    data = bytearray(torch_saved(tmp_path, state_dict()).read_bytes())
    # Declare ~4 GiB uncompressed for the first member in the central directory.
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 0xFFFFFFF0)
    (tmp_path / "huge.pt").write_bytes(bytes(data))
    refused(tmp_path / "huge.pt", InvalidCheckpoint, "declares 4.0 GiB", "over the limit of 2.0 GiB")


def test_compressed_bomb_is_refused_first(tmp_path: Path, torch_load_calls: list[str]) -> None:
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
        archive.writestr("archive/data/0", bytes(8 * 1024 * 1024))
    assert path.stat().st_size < 64 * 1024
    refused(path, InvalidCheckpoint, "declares 8.0 MiB", "over the limit", max_bytes=1024 * 1024)


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:4] + bytes(range(256)) * 4, id="garbage-after-magic"),
        pytest.param(lambda data: data.replace(b"PK\x05\x06", b"XX\x05\x06"), id="no-end-record"),
    ],
)
def test_corrupt_zip_is_refused(
    tmp_path: Path, torch_load_calls: list[str], mangle: Callable[[bytes], bytes]
) -> None:
    data = torch_saved(tmp_path, state_dict()).read_bytes()
    (tmp_path / "corrupt.pt").write_bytes(mangle(data))
    refused(tmp_path / "corrupt.pt", InvalidCheckpoint, "not a readable zip archive")


def test_empty_zip_is_refused(tmp_path: Path, torch_load_calls: list[str]) -> None:
    path = tmp_path / "empty.pt"
    zipfile.ZipFile(path, "w").close()
    refused(path, InvalidCheckpoint, "not laid out like a torch.save checkpoint")


def test_zip_without_data_pickle_is_refused(tmp_path: Path, torch_load_calls: list[str]) -> None:
    path = torch_saved(tmp_path, state_dict())
    stripped = rewrite_zip(path, tmp_path / "stripped.pt", drop=lambda name: name.endswith("data.pkl"))
    refused(stripped, InvalidCheckpoint, "no ", "data.pkl")


def test_corrupt_storage_is_refused(tmp_path: Path) -> None:
    path = torch_saved(tmp_path, state_dict())
    prefix = prefix_of(path)
    short = rewrite_zip(path, tmp_path / "short.pt", replace={f"{prefix}/data/0": b"\x00" * 3})
    refused(short, InvalidCheckpoint, "torch.load could not read the checkpoint")


# --- what the pickle holds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "fragments"),
    [
        pytest.param({"weight": torch.ones(2), "step": 5}, ["'step'", "holds an int, not a tensor"],
                     id="int"),
        pytest.param({"weight": torch.ones(2), "names": ["a"]}, ["'names'", "list"], id="list"),
        pytest.param([torch.ones(2)], ["holds a list, not a state_dict"], id="top-level-list"),
        pytest.param(torch.ones(2), ["torch.Tensor, not a state_dict"], id="bare-tensor"),
        pytest.param({"epoch": 3, "optimizer": {"state": {}}}, ["no tensors", "'epoch'"], id="no-tensors"),
        pytest.param({}, ["empty"], id="empty"),
        pytest.param({1: torch.ones(1)}, ["key of type int"], id="int-key"),
        pytest.param({"": torch.ones(1)}, ["tensor name ''"], id="empty-name"),
        pytest.param({"w": torch.ones(2).to_sparse()}, ["not a dense CPU tensor"], id="sparse"),
    ],
)
def test_not_a_state_dict_is_refused(tmp_path: Path, obj: Any, fragments: list[str]) -> None:
    refused(torch_saved(tmp_path, obj), InvalidCheckpoint, *fragments)


@pytest.mark.parametrize(
    ("manifest", "fragment"),
    [
        pytest.param(["not", "a", "dict"], "must be a dict", id="list"),
        pytest.param({"model_name": torch.ones(1)}, "not JSON data", id="tensor-inside"),
        pytest.param({"x": float("nan")}, "non-finite", id="nan"),
    ],
)
def test_embedded_manifest_must_be_json_data(tmp_path: Path, manifest: Any, fragment: str) -> None:
    path = torch_saved(tmp_path, {"state_dict": state_dict(), "heimdall": manifest})
    refused(path, InvalidManifest, fragment)


def test_safetensors_embedded_manifest_must_be_a_json_object(tmp_path: Path) -> None:
    save_file(state_dict(), tmp_path / "a.safetensors", metadata={"heimdall": "[1, 2]"})
    refused(tmp_path / "a.safetensors", InvalidManifest, "must be a JSON object")
    save_file(state_dict(), tmp_path / "b.safetensors", metadata={"heimdall": '{"a": 1, "a": 2}'})
    refused(tmp_path / "b.safetensors", InvalidManifest, "not acceptable JSON")


# --- other files ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(bytes(range(7, 250)), "unrecognised checkpoint format", id="random"),
        pytest.param(b"\x08\x07\x12\x07pytorch", "unrecognised checkpoint format", id="onnx-like"),
        pytest.param(b"(dp0\nS'a'\np1\nI1\ns.", "unrecognised checkpoint format", id="protocol-0-pickle"),
    ],
)
def test_unrecognised_files_are_refused(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    refused(path, InvalidCheckpoint, fragment)


def test_size_limit_is_checked_first(tmp_path: Path, torch_load_calls: list[str]) -> None:
    path = torch_saved(tmp_path, state_dict())
    refused(path, InvalidCheckpoint, "over the limit of 100 bytes", max_bytes=100)


def test_missing_file_and_directory_are_refused(tmp_path: Path) -> None:
    refused(tmp_path / "nope.pt", InvalidCheckpoint, "does not exist")
    refused(tmp_path, InvalidCheckpoint, "not a regular file")
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    refused(fifo, InvalidCheckpoint, "not a regular file")  # and does not block opening it


def test_tensor_count_limit_applies_to_zip_checkpoints(tmp_path: Path) -> None:
    path = torch_saved(tmp_path, {f"w{i}": torch.ones(1) for i in range(20)})
    refused(path, InvalidCheckpoint, "over the limit of 10", max_tensors=10)


# --- safetensors headers --------------------------------------------------------------------------


def test_safetensors_header_validation_accepts_a_hand_written_file(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": "pt"}, "a": f32([2], 0), "b": f32([1, 1], 8), "e": f32([0], 12)}
    data = struct.pack("<3f", 1.0, 2.0, 3.0)
    result = load_checkpoint(safetensors_file(tmp_path, header, data))
    assert result.format == "safetensors"
    assert result.state_dict["a"].tolist() == [1.0, 2.0]
    assert result.state_dict["b"].tolist() == [[3.0]]
    assert result.state_dict["e"].shape == (0,)


SAFETENSORS_CASES: list[Any] = [
    pytest.param(b'{"a": {"dtype": "F32", "shape": [1], ', b"", {}, "not valid JSON", id="corrupt-json"),
    pytest.param({"a": f32([1], 0)}, b"\x00" * 4, {"length": 10_000}, "runs past the end",
                 id="length-past-eof"),
    pytest.param({"a": f32([1], 0)}, b"\x00" * 4, {"length": 200_000_000}, "over the format's limit",
                 id="length-over-cap"),
    pytest.param({"a": f32([4], 0)}, b"\x00" * 8, {}, "outside the data area", id="offsets-past-end"),
    pytest.param({"a": f32([2], 0), "b": f32([2], 4)}, b"\x00" * 12, {}, "overlap", id="overlap"),
    pytest.param({"a": f32([1], 0), "b": f32([1], 8)}, b"\x00" * 12, {}, "no tensor covers", id="gap"),
    pytest.param({"a": f32([1], 0)}, b"\x00" * 12, {}, "its tensors cover 4", id="trailing-bytes"),
    pytest.param({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\x00" * 8, {},
                 "needs 12", id="size-mismatch"),
    pytest.param({"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}, b"\x00" * 16, {},
                 "unknown dtype 'F128'", id="unknown-dtype"),
    pytest.param({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4, {},
                 "invalid shape", id="negative-dim"),
    pytest.param({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\x00" * 4, {},
                 "invalid shape", id="bool-dim"),
    pytest.param({"a": {"dtype": "F32", "shape": [1] * 17, "data_offsets": [0, 4]}}, b"\x00" * 4, {},
                 "invalid shape", id="rank-17"),
    pytest.param({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\x00" * 4, {},
                 "invalid data_offsets", id="one-offset"),
    pytest.param({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "x": 1}}, b"\x00" * 4, {},
                 "exactly dtype, shape and data_offsets", id="extra-field"),
    pytest.param({"x" * 2000: f32([1], 0)}, b"\x00" * 4, {}, "tensor name", id="absurd-name"),
    pytest.param({"a\x00b": f32([1], 0)}, b"\x00" * 4, {}, "printable", id="control-char-name"),
    pytest.param(b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}', b"\x00" * 4, {},
                 "duplicate key 'a'", id="duplicate-key"),
    pytest.param({"__metadata__": {"k": 1}, "a": f32([1], 0)}, b"\x00" * 4, {}, "__metadata__",
                 id="metadata-not-strings"),
    pytest.param(b'{"a": {"dtype": "F32", "shape": [NaN], "data_offsets": [0, 4]}}', b"\x00" * 4, {},
                 "not acceptable JSON", id="nan"),
    pytest.param(b'{"a": "\xff\xfe"}', b"", {}, "UTF-8", id="bad-utf8"),
    pytest.param(b'{"a": ' + b"[" * 50 + b"]" * 50 + b"}", b"", {}, "must be an object", id="nested"),
    pytest.param(b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", b"", {}, "nests too deeply",
                 id="deep"),
    pytest.param({"a": {"dtype": "F32", "shape": [10**40], "data_offsets": [0, 4]}}, b"\x00" * 4, {},
                 "needs", id="absurd-numel"),
    pytest.param({f"t{i}": f32([0], 0) for i in range(11)}, b"", {"max_tensors": 10},
                 "more than 10 tensors", id="count-over-limit"),
    pytest.param(b"{}", b"", {}, "state_dict is empty", id="no-tensors"),
]


@pytest.mark.parametrize(("header", "data", "options", "fragment"), SAFETENSORS_CASES)
def test_safetensors_header_refusals(
    tmp_path: Path, header: dict[str, Any] | bytes, data: bytes, options: dict[str, int], fragment: str
) -> None:
    length = options.get("length")
    limits = {k: v for k, v in options.items() if k != "length"}
    path = safetensors_file(tmp_path, header, data, length=length)
    refused(path, InvalidCheckpoint, fragment, **limits)


def test_absurd_tensor_count_at_the_default_limit(tmp_path: Path) -> None:
    entry = '"t{}": {{"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}'
    raw = ("{" + ", ".join(entry.format(i) for i in range(100_001)) + "}").encode()
    refused(safetensors_file(tmp_path, raw), InvalidCheckpoint, "more than 100000 tensors")


def test_safetensors_library_is_not_reached_with_a_bad_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []

    def record(path: Path) -> dict[str, torch.Tensor]:
        calls.append(path)
        return {}

    monkeypatch.setattr(loading, "load_safetensors", record)
    path = safetensors_file(tmp_path, {"a": f32([2], 0), "b": f32([2], 4)}, b"\x00" * 12)
    refused(path, InvalidCheckpoint, "overlap")
    assert calls == []


def test_loaded_checkpoint_is_frozen(tmp_path: Path) -> None:
    result = load_checkpoint(torch_saved(tmp_path, state_dict()))
    assert isinstance(result, LoadedCheckpoint)
    with pytest.raises(AttributeError):
        result.sha256 = "0" * 64  # type: ignore[misc]
