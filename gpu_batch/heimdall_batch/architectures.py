"""The architecture registry (DESIGN §4): how a state_dict becomes a model.

A state_dict carries no code, so the manifest names an architecture and this module turns that name
into a model. Names resolve in two places only:

- the built-ins below (``localization_net``, ``mlp``, ``transformer_encoder``), plain torch; and
- plug-ins registered by installed distributions under the entry-point group
  :data:`ENTRY_POINT_GROUP`, where the entry point's name is the architecture name and its value
  points at ``build(**architecture_kwargs) -> torch.nn.Module``.

A name from an upload is only ever compared with those registered names: it is never imported,
so ``os:system`` or a module path is just an unknown architecture. A built-in cannot be shadowed
by a plug-in of the same name. :func:`build_model` then fits the checkpoint to the model exactly
(keys, shapes, dtype kinds), and checks that the result accepts the manifest's input and returns
as many outputs as the manifest names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Final

import torch
from torch import nn

from heimdall.contracts.manifest import Manifest
from heimdall.errors import StateDictMismatch, UnsupportedArchitecture

Builder = Callable[..., nn.Module]

ENTRY_POINT_GROUP: Final = "heimdall.architectures"

#: Bounds of the localization net's uncertainty output (DESIGN §4).
UNCERTAINTY_MIN: Final = 0.01
UNCERTAINTY_MAX: Final = 1.0

#: How many names of each kind of mismatch a message lists (the counts are always given).
_LISTED: Final = 5
#: How many names of each kind the error's ``details`` carry.
_DETAILED: Final = 50


# --- built-in architectures -----------------------------------------------------------------------


class LocalizationNet(nn.Module):
    """The reference localisation model: ``[B, 3, 128, 32]`` -> ``positions [B, 2]``,
    ``uncertainties [B, 2]`` in ``[0.01, 1.0]``.

    Four strided 3x3 convolutions (each with BatchNorm and ReLU) halve the image per stage, so
    128x32 becomes 8x2 after about 4.4M multiply-adds. The 8x2 grid is flattened rather than pooled:
    a global pool would throw away the very positions the heads estimate. A shared hidden layer
    feeds two linear heads. With the defaults the model has about 426k parameters, over 99% of
    them conv and linear weights (what static INT8 quantisation shrinks), and every operator
    exports to plain ONNX: Conv (BatchNorm folded in), Relu, Flatten, Gemm, Sigmoid, Clip.
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128),
        hidden: int = 160,
        input_size: Sequence[int] = (128, 32),
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        height, width = input_size
        for stage_width in channels:
            # bias=False: the BatchNorm that follows has its own shift (and is folded into the conv).
            layers += [
                nn.Conv2d(previous, stage_width, kernel_size=3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(stage_width),
                nn.ReLU(),
            ]
            previous = stage_width
            height, width = (height + 1) // 2, (width + 1) // 2
        self.features = nn.Sequential(*layers)
        self.trunk = nn.Sequential(nn.Flatten(), nn.Linear(previous * height * width, hidden), nn.ReLU())
        self.position_head = nn.Linear(hidden, 2)
        self.uncertainty_head = nn.Linear(hidden, 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions (unbounded) and uncertainties (sigmoid, clamped to ``[0.01, 1.0]``)."""
        shared = self.trunk(self.features(images))
        positions = self.position_head(shared)
        # Sigmoid alone reaches 0.0 in float32 for large negative logits; the clamp makes the floor
        # a guarantee.
        uncertainties = torch.sigmoid(self.uncertainty_head(shared)).clamp(UNCERTAINTY_MIN, UNCERTAINTY_MAX)
        return positions, uncertainties


def build_localization_net(
    *,
    in_channels: int = 3,
    channels: Sequence[int] = (16, 32, 64, 128),
    hidden: int = 160,
    input_size: Sequence[int] = (128, 32),
) -> nn.Module:
    """The built-in ``localization_net`` (DESIGN §4); ``input_size`` is the image's (height, width)."""
    _positive_int("in_channels", in_channels)
    _positive_ints("channels", channels, max_length=6)
    _positive_int("hidden", hidden)
    _positive_ints("input_size", input_size, max_length=2)
    if len(input_size) != 2:
        raise ValueError(f"input_size must be [height, width], got {list(input_size)!r}")
    return LocalizationNet(in_channels=in_channels, channels=tuple(channels), hidden=hidden,
                           input_size=tuple(input_size))


_ACTIVATIONS: Final[Mapping[str, type[nn.Module]]] = {"gelu": nn.GELU, "relu": nn.ReLU}


def build_mlp(
    *,
    in_features: int = 16,
    hidden: Sequence[int] = (64, 64),
    out_features: int = 4,
    activation: str = "gelu",
    dropout: float = 0.0,
) -> nn.Module:
    """The built-in ``mlp``: ``[B, in_features]`` -> ``[B, out_features]`` through Linear layers of
    the ``hidden`` widths, each followed by ``activation`` (``gelu`` or ``relu``) and dropout (a no-op
    in eval mode, so it leaves no trace in the export)."""
    _positive_int("in_features", in_features)
    _positive_ints("hidden", hidden, max_length=32, allow_empty=True)
    _positive_int("out_features", out_features)
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(_ACTIVATIONS)}, got {activation!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    layers: list[nn.Module] = []
    previous = in_features
    for width in hidden:
        layers += [nn.Linear(previous, width), _ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(float(dropout)))
        previous = width
    layers.append(nn.Linear(previous, out_features))
    return nn.Sequential(*layers)


class TransformerEncoderModel(nn.Module):
    """``[B, seq_len, d_model]`` float32 (already embedded: no token lookup) -> ``[B, out_features]``.

    A learned positional embedding is added, ``num_layers`` encoder layers run with
    ``batch_first=True``, the sequence is mean-pooled and a linear head projects it.
    ``enable_nested_tensor=False``: the nested-tensor path only pays off with padding masks, which
    this model never gets, so it is switched off rather than left to heuristics. The export at
    opset 17 with a dynamic batch axis works either way (the TorchScript exporter traces the plain
    path); the fused per-layer kernel eager inference may take matches ONNX Runtime within 1e-6.
    """

    def __init__(
        self, *, d_model: int, nhead: int, num_layers: int, seq_len: int, out_features: int,
        dim_feedforward: int, dropout: float,
    ) -> None:
        super().__init__()
        self.positional = nn.Parameter(torch.zeros(1, seq_len, d_model))
        nn.init.trunc_normal_(self.positional, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward=dim_feedforward, dropout=dropout, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, out_features)

    def forward(self, sequence: torch.Tensor) -> torch.Tensor:
        """Encode, mean-pool over the sequence, project."""
        encoded = self.encoder(sequence + self.positional)
        out: torch.Tensor = self.head(encoded.mean(dim=1))
        return out


def build_transformer_encoder(
    *,
    d_model: int = 64,
    nhead: int = 4,
    num_layers: int = 2,
    seq_len: int = 16,
    out_features: int = 4,
    dim_feedforward: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """The built-in ``transformer_encoder`` (``dim_feedforward`` defaults to ``2 * d_model``)."""
    for key, value in (("d_model", d_model), ("nhead", nhead), ("num_layers", num_layers),
                       ("seq_len", seq_len), ("out_features", out_features)):
        _positive_int(key, value)
    if d_model % nhead:
        raise ValueError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
    feedforward = 2 * d_model if dim_feedforward is None else dim_feedforward
    _positive_int("dim_feedforward", feedforward)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
    return TransformerEncoderModel(
        d_model=d_model, nhead=nhead, num_layers=num_layers, seq_len=seq_len, out_features=out_features,
        dim_feedforward=feedforward, dropout=float(dropout),
    )


def _positive_int(key: str, value: object, *, limit: int = 1 << 16) -> None:
    # bool is an int to Python, and JSON's true would otherwise build a one-channel layer.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
        raise ValueError(f"{key} must be an integer between 1 and {limit}, got {value!r}")


def _positive_ints(key: str, values: object, *, max_length: int, allow_empty: bool = False) -> None:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ValueError(f"{key} must be a list of integers, got {values!r}")
    fewest = 0 if allow_empty else 1
    if not fewest <= len(values) <= max_length:
        raise ValueError(f"{key} must have {fewest} to {max_length} entries, got {len(values)}")
    for value in values:
        _positive_int(f"each of {key}", value)


BUILTINS: Final[Mapping[str, Builder]] = {
    "localization_net": build_localization_net,
    "mlp": build_mlp,
    "transformer_encoder": build_transformer_encoder,
}


# --- registry -------------------------------------------------------------------------------------


def available() -> dict[str, str]:
    """Every architecture name that resolves: ``"builtin"``, or the plug-in entry point's value
    (``module:attribute``). Plug-ins named like a built-in are left out: the built-in wins."""
    names: dict[str, str] = dict.fromkeys(BUILTINS, "builtin")
    for entry in _plugin_entry_points():
        names.setdefault(entry.name, entry.value)
    return dict(sorted(names.items()))


def resolve(name: str) -> Builder:
    """The builder registered as ``name``: a built-in, else an installed plug-in.

    ``name`` is only compared with registered names, never imported. Unknown names, names two
    distributions register differently, and plug-ins that fail to import or are not callable raise
    :class:`~heimdall.errors.UnsupportedArchitecture` (exit code 4).
    """
    if name in BUILTINS:
        return BUILTINS[name]
    matches = [entry for entry in _plugin_entry_points() if entry.name == name]
    if not matches:
        known = ", ".join(available())
        raise UnsupportedArchitecture(
            f"unknown architecture {_shown(name)}; the known architectures are: {known}",
            field="architecture",
        )
    values = sorted({entry.value for entry in matches})
    if len(values) > 1:
        raise UnsupportedArchitecture(
            f"architecture {_shown(name)} is registered by more than one installed package "
            f"({', '.join(values)}); refusing to guess",
            field="architecture",
        )
    entry = matches[0]
    try:
        builder = entry.load()
    except Exception as exc:  # a plug-in's import can fail in any way; all of them mean "not usable"
        raise UnsupportedArchitecture(
            f"architecture {_shown(name)} is registered ({entry.value}) but failed to load: "
            f"{type(exc).__name__}: {_clip(str(exc))}",
            field="architecture",
        ) from exc
    if not callable(builder):
        raise UnsupportedArchitecture(
            f"architecture {_shown(name)} is registered ({entry.value}) but that is a "
            f"{type(builder).__name__}, not a callable builder",
            field="architecture",
        )
    return builder  # type: ignore[no-any-return]  # entry points are untyped


def _plugin_entry_points() -> list[metadata.EntryPoint]:
    # Looked up on every call (not cached) so a plug-in installed into a running process, or a
    # test's temporary distribution, is seen.
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


# --- building and fitting -------------------------------------------------------------------------


def build_model(manifest: Manifest, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Build the manifest's architecture, load ``state_dict`` into it exactly, and check it runs.

    Returns the model in float32 and eval mode. Raises
    :class:`~heimdall.errors.UnsupportedArchitecture` for unknown names, rejected
    ``architecture_kwargs``, or a model that does not take ``manifest.input_shape`` or returns a
    different number of outputs than ``manifest.output_names``; and
    :class:`~heimdall.errors.StateDictMismatch` when keys, shapes or dtype kinds differ.
    """
    return fit_model(manifest, instantiate(manifest), state_dict)


def instantiate(manifest: Manifest) -> nn.Module:
    """The manifest's architecture built with its ``architecture_kwargs``, weights as initialised: its
    ``state_dict()`` keys are what a checkpoint's weights must match (:mod:`heimdall_batch.weights`)."""
    name = manifest.architecture
    builder = resolve(name)
    kwargs = manifest.architecture_kwargs
    try:
        model = builder(**kwargs)
    except TypeError as exc:
        raise UnsupportedArchitecture(
            f"architecture {_shown(name)} does not accept architecture_kwargs "
            f"{_listing(sorted(kwargs)) or '(none)'}: {_clip(str(exc))}",
            field="architecture_kwargs",
        ) from None
    except MemoryError:
        raise
    except Exception as exc:  # a builder (possibly a plug-in) refusing its kwargs, e.g. ValueError
        raise UnsupportedArchitecture(
            f"architecture {_shown(name)} could not be built with architecture_kwargs "
            f"{_listing(sorted(kwargs)) or '(none)'}: {type(exc).__name__}: {_clip(str(exc))}",
            field="architecture_kwargs",
        ) from None
    if not isinstance(model, nn.Module):
        raise UnsupportedArchitecture(
            f"architecture {_shown(name)} built a {type(model).__name__}, not a torch.nn.Module",
            field="architecture",
        )
    return model


def fit_model(manifest: Manifest, model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Load ``state_dict`` into ``model`` (from :func:`instantiate`) exactly and check it runs."""
    name = manifest.architecture
    check_state_dict(name, model.state_dict(), state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # not expected after the check above; still a mismatch, not a crash
        raise StateDictMismatch(
            f"the state_dict does not load into {_shown(name)}: {_clip(str(exc))}"
        ) from None
    model = model.float().eval()
    _check_runs(model, manifest)
    return model


def check_state_dict(
    name: str, expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]
) -> None:
    """Raise :class:`~heimdall.errors.StateDictMismatch` unless ``given`` has exactly the keys of
    ``expected`` with the same shapes, and floating-point tensors where the model has them.

    The message names the first few missing keys, unexpected keys and mismatched shapes with the
    count of each; the error's ``details`` carry longer lists.
    """
    missing = [key for key in expected if key not in given]
    unexpected = [key for key in given if key not in expected]
    mismatched: list[str] = []
    for key, want in expected.items():
        got = given.get(key)
        if got is None:
            continue
        if tuple(got.shape) != tuple(want.shape):
            mismatched.append(f"{key}: checkpoint {list(got.shape)} vs model {list(want.shape)}")
        elif got.is_complex() or got.is_floating_point() != want.is_floating_point():
            # copy_ would silently cast (and drop imaginary parts); a kind change is a wrong file.
            mismatched.append(f"{key}: checkpoint {_dtype(got)} vs model {_dtype(want)}")
    if not (missing or unexpected or mismatched):
        return
    parts = [
        f"{len(items)} {label} ({_listing(items)})"
        for label, items in (
            ("missing key(s)", missing),
            ("unexpected key(s)", unexpected),
            ("shape/dtype mismatch(es)", mismatched),
        )
        if items
    ]
    raise StateDictMismatch(
        f"the state_dict does not match architecture {_shown(name)}: " + "; ".join(parts),
        missing=missing[:_DETAILED],
        unexpected=unexpected[:_DETAILED],
        mismatched=mismatched[:_DETAILED],
        counts={"missing": len(missing), "unexpected": len(unexpected), "mismatched": len(mismatched)},
    )


def _check_runs(model: nn.Module, manifest: Manifest) -> None:
    """The model takes zeros of ``manifest.input_shape`` and returns one tensor per output name,
    each with the batch dimension first when the batch axis is dynamic."""
    shape = list(manifest.input_shape)
    try:
        with torch.inference_mode():
            result = model(torch.zeros(*shape, dtype=torch.float32))
    except MemoryError:
        raise
    except Exception as exc:  # whatever the forward raises, the model does not fit this manifest
        raise UnsupportedArchitecture(
            f"architecture {_shown(manifest.architecture)} does not accept an input of shape {shape}: "
            f"{type(exc).__name__}: {_clip(str(exc))}",
            field="input_shape",
        ) from None
    items: Sequence[object] = (
        (result,) if isinstance(result, torch.Tensor) else result if isinstance(result, tuple | list) else ()
    )
    outputs = [item for item in items if isinstance(item, torch.Tensor)]
    if not outputs or len(outputs) != len(items):
        raise UnsupportedArchitecture(
            f"architecture {_shown(manifest.architecture)} returns {type(result).__name__}, not a tensor "
            "or a tuple/list of tensors",
            field="architecture",
        )
    names = manifest.output_names
    if len(outputs) != len(names):
        raise UnsupportedArchitecture(
            f"architecture {_shown(manifest.architecture)} returns {len(outputs)} output"
            f"{'' if len(outputs) == 1 else 's'} but the manifest names {len(names)} ({', '.join(names)})",
            field="output_names",
        )
    if manifest.dynamic_batch:
        for out_name, out in zip(names, outputs, strict=True):
            if out.dim() == 0 or out.shape[0] != shape[0]:
                raise UnsupportedArchitecture(
                    f"output {out_name} has shape {list(out.shape)}: with a dynamic batch every output "
                    f"must lead with the batch dimension ({shape[0]} here)",
                    field="output_names",
                )


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_LISTED])
    return shown + (f", ... {len(items) - _LISTED} more" if len(items) > _LISTED else "")


def _shown(name: str) -> str:
    # Names come from uploads: quote them, and keep a hostile one from flooding the message.
    return repr(name[:128] + ("..." if len(name) > 128 else ""))


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


__all__ = [
    "BUILTINS",
    "ENTRY_POINT_GROUP",
    "UNCERTAINTY_MAX",
    "UNCERTAINTY_MIN",
    "Builder",
    "LocalizationNet",
    "TransformerEncoderModel",
    "available",
    "build_localization_net",
    "build_mlp",
    "build_model",
    "build_transformer_encoder",
    "check_state_dict",
    "fit_model",
    "instantiate",
    "parameter_count",
    "resolve",
]
