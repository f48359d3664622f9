"""The architecture registry (DESIGN §4): built-ins, plug-ins, and fitting a state_dict exactly.

Plug-ins are real: each test that needs one writes a module and a ``*.dist-info`` with an
``entry_points.txt`` into ``tmp_path`` and puts it on ``sys.path``, so discovery goes through
``importlib.metadata`` exactly as it does for a package installed in the Batch image.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from heimdall.contracts.manifest import Manifest, parse_manifest
from heimdall.errors import HeimdallError, StateDictMismatch, UnsupportedArchitecture
from heimdall_batch import architectures
from heimdall_batch.architectures import (
    BUILTINS,
    ENTRY_POINT_GROUP,
    UNCERTAINTY_MAX,
    UNCERTAINTY_MIN,
    LocalizationNet,
    available,
    build_localization_net,
    build_model,
    parameter_count,
    resolve,
)

#: (input shape at batch 1, output shapes at batch 1) of each built-in with its defaults.
BUILTIN_IO: dict[str, tuple[list[int], list[tuple[int, ...]]]] = {
    "localization_net": ([1, 3, 128, 32], [(1, 2), (1, 2)]),
    "mlp": ([1, 16], [(1, 4)]),
    "transformer_encoder": ([1, 16, 64], [(1, 4)]),
}
PLUGIN_MODULE = "heimdall_test_plugin"
EVIL_MODULE = "heimdall_test_evil_arch"


def manifest_for(architecture: str, **overrides: Any) -> Manifest:
    input_shape, outputs = BUILTIN_IO.get(architecture, ([1, 3], [(1, 2)]))
    doc: dict[str, Any] = {
        "model_name": "test-model",
        "version": "1.0.0",
        "architecture": architecture,
        "input_shape": input_shape,
        "output_names": ["positions", "uncertainties"] if len(outputs) == 2 else ["output"],
    }
    doc.update(overrides)
    return parse_manifest(doc)


def trained_state_dict(architecture: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    """A state_dict as training would leave it: random weights, non-trivial BatchNorm statistics."""
    torch.manual_seed(1)
    model = BUILTINS[architecture](**kwargs)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(torch.randn_like(tensor) * 0.1 + (1.0 if name.endswith("running_var") else 0.0))
    return {k: v.clone() for k, v in model.state_dict().items()}


def refused(error: type[HeimdallError], *fragments: str) -> _Refused:
    """Context: expect exactly ``error`` (exit code 4) with every fragment in its message."""
    return _Refused(error, fragments)


class _Refused:
    def __init__(self, error: type[HeimdallError], fragments: tuple[str, ...]) -> None:
        self.error = error
        self.fragments = fragments
        self.exc: HeimdallError | None = None

    def __enter__(self) -> _Refused:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        assert exc is not None, f"expected {self.error.__name__}, nothing was raised"
        assert type(exc) is self.error, f"{type(exc).__name__}: {exc}"
        assert isinstance(exc, HeimdallError)
        assert exc.code == self.error.code
        assert getattr(exc, "exit_code", None) == 4
        for fragment in self.fragments:
            assert fragment in exc.message, exc.message
        self.exc = exc
        return True


# --- built-ins ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_IO))
def test_builtin_builds_and_has_the_promised_outputs(name: str) -> None:
    input_shape, output_shapes = BUILTIN_IO[name]
    model = BUILTINS[name]().eval()
    for batch in (1, 5):
        with torch.inference_mode():
            result = model(torch.randn(batch, *input_shape[1:]))
        outputs = result if isinstance(result, tuple) else (result,)
        assert [tuple(o.shape) for o in outputs] == [(batch, *s[1:]) for s in output_shapes]
        assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outputs)


def test_localization_net_size_and_weight_share() -> None:
    model = build_localization_net()
    total = parameter_count(model)
    assert 400_000 <= total <= 600_000, total
    # INT8 shrinks conv and linear weights; they must be nearly all of the model for a 0.3 size ratio.
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    assert weights / total > 0.98, weights / total


@pytest.mark.parametrize(("bias", "expected"), [(1e4, UNCERTAINTY_MAX), (-1e4, UNCERTAINTY_MIN)])
def test_localization_net_uncertainties_stay_clamped_with_extreme_weights(
    bias: float, expected: float
) -> None:
    model = LocalizationNet().eval()
    with torch.no_grad():
        model.uncertainty_head.weight.mul_(1e6)
        model.uncertainty_head.bias.fill_(bias)
    with torch.inference_mode():
        _, uncertainties = model(torch.randn(16, 3, 128, 32) * 1e3)
    assert torch.isfinite(uncertainties).all()
    assert uncertainties.min() >= UNCERTAINTY_MIN
    assert uncertainties.max() <= UNCERTAINTY_MAX
    # The bound is reached, so the clamp (not luck) is what holds it.
    assert (uncertainties == torch.tensor(expected, dtype=torch.float32)).any()


def test_localization_net_uncertainties_are_in_range_for_random_weights() -> None:
    model = build_model(manifest_for("localization_net"), trained_state_dict("localization_net"))
    with torch.inference_mode():
        _, uncertainties = model(torch.randn(64, 3, 128, 32))
    assert uncertainties.min() >= UNCERTAINTY_MIN
    assert uncertainties.max() <= UNCERTAINTY_MAX


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", sorted(BUILTIN_IO))
def test_builtin_exports_to_onnx_with_a_dynamic_batch_and_parity(name: str, tmp_path: Path) -> None:
    input_shape, _ = BUILTIN_IO[name]
    manifest = manifest_for(name)
    model = build_model(manifest, trained_state_dict(name))
    path = tmp_path / "model.onnx"
    names = manifest.output_names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.zeros(*input_shape),), str(path), opset_version=17, dynamo=False,
            input_names=["input"], output_names=names,
            dynamic_axes={n: {0: "batch"} for n in ["input", *names]},
        )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        x = rng.standard_normal((batch, *input_shape[1:]), dtype=np.float32)
        with torch.inference_mode():
            result = model(torch.from_numpy(x))
        expected = result if isinstance(result, tuple) else (result,)
        got = session.run(None, {"input": x})
        for want, have in zip(expected, got, strict=True):
            assert have.shape == tuple(want.shape)
            assert float(np.abs(want.numpy() - have).max()) <= 1e-4


# --- the registry ---------------------------------------------------------------------------------


def test_available_lists_the_builtins() -> None:
    names = available()
    for name in BUILTINS:
        assert names[name] == "builtin"
        assert resolve(name) is BUILTINS[name]


def test_unknown_architecture_lists_the_known_ones() -> None:
    with refused(UnsupportedArchitecture, "unknown architecture 'resnet9000'", "localization_net", "mlp",
                 "transformer_encoder") as check:
        resolve("resnet9000")
    assert check.exc is not None and check.exc.field == "architecture"
    with refused(UnsupportedArchitecture, "unknown architecture 'resnet9000'"):
        build_model(manifest_for("resnet9000"), {})


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A module on sys.path that leaves a marker when imported; yields the marker's path."""
    marker = tmp_path / "IMPORTED"
    source = tmp_path / "evil"
    source.mkdir()
    (source / f"{EVIL_MODULE}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\n\n"
        "def build(**kwargs):\n    raise SystemExit\n"
    )
    monkeypatch.syspath_prepend(str(source))
    yield marker
    sys.modules.pop(EVIL_MODULE, None)


@pytest.mark.parametrize(
    "name", [f"{EVIL_MODULE}:build", EVIL_MODULE, f"{EVIL_MODULE}.build", "os:system", "builtins:eval"]
)
def test_a_dotted_path_is_only_a_name(evil_module: Path, name: str) -> None:
    with refused(UnsupportedArchitecture, "unknown architecture"):
        resolve(name)
    assert not evil_module.exists()
    assert EVIL_MODULE not in sys.modules
    # The trap was live: importing the module does leave the marker.
    importlib.import_module(EVIL_MODULE)
    assert evil_module.exists()


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A distribution installed into a temporary site directory, registering architectures."""
    site = tmp_path / "site"
    site.mkdir()
    (site / f"{PLUGIN_MODULE}.py").write_text(
        "import torch\n\n"
        "def build(width=3, outputs=2):\n"
        "    return torch.nn.Linear(width, outputs)\n\n"
        "def build_not_a_module():\n"
        "    return 'not a module'\n\n"
        "class DictOutput(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return {'output': x}\n\n"
        "NOT_CALLABLE = 42\n"
    )
    (site / "heimdall_test_failing_plugin.py").write_text("raise RuntimeError('missing CUDA kernels')\n")
    _install(
        site,
        "heimdall_test_plugin",
        {
            "tiny_linear": f"{PLUGIN_MODULE}:build",
            "not_a_module": f"{PLUGIN_MODULE}:build_not_a_module",
            "not_callable": f"{PLUGIN_MODULE}:NOT_CALLABLE",
            "dict_output": f"{PLUGIN_MODULE}:DictOutput",
            "missing_module": "heimdall_test_no_such_module:build",
            "failing_import": "heimdall_test_failing_plugin:build",
            "mlp": f"{PLUGIN_MODULE}:build",
        },
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in (PLUGIN_MODULE, "heimdall_test_failing_plugin"):
        sys.modules.pop(module, None)


def _install(site: Path, distribution: str, entry_points: dict[str, str]) -> None:
    info = site / f"{distribution}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]", *(f"{name} = {value}" for name, value in entry_points.items())]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def test_plugin_is_discovered_through_the_entry_point_group(plugin_site: Path) -> None:
    names = available()
    assert names["tiny_linear"] == f"{PLUGIN_MODULE}:build"
    assert names["mlp"] == "builtin"
    builder = resolve("tiny_linear")
    assert builder is sys.modules[PLUGIN_MODULE].build
    manifest = manifest_for("tiny_linear", architecture_kwargs={"width": 3}, output_names=["output"])
    state = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    model = build_model(manifest, state)
    with torch.inference_mode():
        assert model(torch.ones(1, 3)).tolist() == [[3.0, 3.0]]


def test_plugin_cannot_shadow_a_builtin(plugin_site: Path) -> None:
    assert resolve("mlp") is architectures.build_mlp
    assert PLUGIN_MODULE not in sys.modules


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("missing_module", ["failed to load", "ModuleNotFoundError", "heimdall_test_no_such_module"]),
        ("failing_import", ["failed to load", "RuntimeError: missing CUDA kernels"]),
        ("not_callable", ["int, not a callable builder"]),
    ],
)
def test_broken_plugin_is_unsupported_with_the_reason(
    plugin_site: Path, name: str, fragments: list[str]
) -> None:
    with refused(UnsupportedArchitecture, f"architecture {name!r} is registered", *fragments):
        resolve(name)


def test_plugin_that_builds_no_module_is_unsupported(plugin_site: Path) -> None:
    with refused(UnsupportedArchitecture, "built a str, not a torch.nn.Module"):
        build_model(manifest_for("not_a_module", output_names=["output"]), {})


def test_two_distributions_claiming_one_name_is_refused(plugin_site: Path) -> None:
    _install(plugin_site, "heimdall_other_plugin", {"tiny_linear": "heimdall_other_plugin:build"})
    importlib.invalidate_caches()
    with refused(UnsupportedArchitecture, "more than one installed package", "heimdall_other_plugin:build",
                 f"{PLUGIN_MODULE}:build"):
        resolve("tiny_linear")


# --- fitting the state_dict -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(BUILTIN_IO))
def test_build_model_loads_the_state_dict_exactly(name: str) -> None:
    state = trained_state_dict(name)
    model = build_model(manifest_for(name), state)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, state[key].to(tensor.dtype)), key


def test_half_precision_checkpoint_becomes_float32() -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in trained_state_dict("mlp").items()}
    model = build_model(manifest_for("mlp"), state)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_missing_unexpected_and_misshaped_keys_are_named() -> None:
    state = trained_state_dict("localization_net")
    del state["position_head.weight"]
    del state["features.1.running_mean"]
    state["extra.weight"] = torch.ones(1)
    state["trunk.1.weight"] = torch.ones(3, 3)
    with refused(
        StateDictMismatch,
        "2 missing key(s) (features.1.running_mean, position_head.weight)",
        "1 unexpected key(s) (extra.weight)",
        "1 shape/dtype mismatch(es) (trunk.1.weight: checkpoint [3, 3] vs model [160, 2048])",
    ) as check:
        build_model(manifest_for("localization_net"), state)
    assert check.exc is not None
    assert check.exc.details["counts"] == {"missing": 2, "unexpected": 1, "mismatched": 1}
    assert check.exc.details["unexpected"] == ["extra.weight"]


def test_many_mismatches_are_counted_and_truncated() -> None:
    state = {f"layer{i}.weight": torch.ones(1) for i in range(40)}
    with refused(StateDictMismatch, "40 unexpected key(s)", "... 35 more", "missing key(s)") as check:
        build_model(manifest_for("mlp"), state)
    assert check.exc is not None
    assert check.exc.details["counts"]["unexpected"] == 40


def test_integer_tensor_for_a_float_weight_is_a_mismatch() -> None:
    state = trained_state_dict("mlp")
    state["0.weight"] = torch.zeros_like(state["0.weight"], dtype=torch.int64)
    with refused(StateDictMismatch, "0.weight: checkpoint int64 vs model float32"):
        build_model(manifest_for("mlp"), state)


def test_checkpoint_for_another_architecture_is_a_mismatch() -> None:
    with refused(StateDictMismatch, "does not match architecture 'localization_net'"):
        build_model(manifest_for("localization_net"), trained_state_dict("mlp"))


@pytest.mark.parametrize(
    ("name", "kwargs", "fragments"),
    [
        ("mlp", {"bogus": 1}, ["does not accept architecture_kwargs bogus", "unexpected keyword"]),
        ("localization_net", {"channels": []}, ["could not be built", "channels must have 1 to 6 entries"]),
        ("localization_net", {"hidden": True}, ["hidden must be an integer"]),
        ("mlp", {"activation": "swish"}, ["activation must be one of gelu, relu"]),
        ("transformer_encoder", {"d_model": 10, "nhead": 4}, ["divisible by nhead"]),
    ],
)
def test_bad_kwargs_are_unsupported(name: str, kwargs: dict[str, Any], fragments: list[str]) -> None:
    with refused(UnsupportedArchitecture, *fragments) as check:
        build_model(manifest_for(name, architecture_kwargs=kwargs), {})
    assert check.exc is not None and check.exc.field == "architecture_kwargs"


def test_kwargs_reach_the_builder() -> None:
    kwargs = {"in_features": 5, "hidden": [7], "out_features": 3, "activation": "relu"}
    state = trained_state_dict("mlp", **kwargs)
    manifest = manifest_for("mlp", architecture_kwargs=kwargs, input_shape=[2, 5])
    model = build_model(manifest, state)
    with torch.inference_mode():
        assert model(torch.zeros(2, 5)).shape == (2, 3)


def test_input_shape_the_model_rejects_is_unsupported() -> None:
    manifest = manifest_for("mlp", input_shape=[1, 17])
    with refused(UnsupportedArchitecture, "does not accept an input of shape [1, 17]"):
        build_model(manifest, trained_state_dict("mlp"))


def test_output_count_must_match_the_manifest() -> None:
    manifest = manifest_for("localization_net", output_names=["positions"])
    with refused(UnsupportedArchitecture, "returns 2 outputs but the manifest names 1 (positions)"):
        build_model(manifest, trained_state_dict("localization_net"))
    manifest = manifest_for("mlp", output_names=["a", "b", "c"])
    with refused(UnsupportedArchitecture, "returns 1 output but the manifest names 3 (a, b, c)"):
        build_model(manifest, trained_state_dict("mlp"))


def test_outputs_must_lead_with_the_batch_axis(plugin_site: Path) -> None:
    # tiny_linear on a 1-D input returns a 1-D output: no batch axis for the dynamic export.
    manifest = manifest_for("tiny_linear", input_shape=[3], output_names=["output"])
    with refused(UnsupportedArchitecture, "must lead with the batch dimension"):
        build_model(manifest, {"weight": torch.ones(2, 3), "bias": torch.zeros(2)})


def test_outputs_must_be_tensors(plugin_site: Path) -> None:
    manifest = manifest_for("dict_output", input_shape=[1, 3], output_names=["output"])
    with refused(UnsupportedArchitecture, "returns dict, not a tensor or a tuple/list of tensors"):
        build_model(manifest, {})
