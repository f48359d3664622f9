"""Which of a checkpoint's weights the model takes, and what prefix their names lose.

A checkpoint may hold several state_dicts (Lightning's ``state_dict``, a training loop's ``model`` and
``model_ema``) and its names may carry a wrapper's prefix: ``module.`` (DataParallel, DDP),
``_orig_mod.`` (``torch.compile``) or a LightningModule attribute (``model.``, ``net.``). A *reading* is
one candidate with one prefix removed; it fits when its names are exactly the architecture's names.
Prefixes tried are the empty one, then each run of up to :data:`MAX_STRIPPED` leading name components
common to every key, so ``model._orig_mod.`` is found as well as ``module.``. Exactly one fitting
reading is taken; more than one is refused with :class:`~heimdall.errors.AmbiguousWeights` listing
them: an EMA copy and the trained weights both fit, and only the user knows which to ship. The
manifest's ``state_dict_key`` restricts the candidates to one and its ``strip_prefix`` the prefixes to
one. When nothing fits, the first candidate goes on as it is, so that
:func:`heimdall_batch.architectures.check_state_dict` reports its missing and unexpected keys.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Final

import torch
from torch import nn

from heimdall.contracts.jobs import WeightsChoice
from heimdall.contracts.manifest import Manifest
from heimdall.errors import AmbiguousWeights, InvalidCheckpoint
from heimdall_batch import architectures
from heimdall_batch.checkpoint_text import listing, quoted
from heimdall_batch.loading import DEFAULT_MAX_TENSORS, LoadedCheckpoint
from heimdall_batch.state_dicts import EMA_KEYS, state_dict_at

#: How many leading name components a detected prefix may have (``model._orig_mod.module.``).
MAX_STRIPPED: Final = 3


@dataclass(frozen=True)
class ChosenWeights:
    """The state_dict the model takes (names already stripped) and how it was found."""

    state_dict: dict[str, torch.Tensor]
    choice: WeightsChoice


def build_from_checkpoint(manifest: Manifest, loaded: LoadedCheckpoint) -> tuple[nn.Module, WeightsChoice]:
    """Build the manifest's architecture and load the checkpoint's weights that fit it (see module doc)."""
    model = architectures.instantiate(manifest)
    chosen = choose_weights(loaded, model.state_dict().keys(), manifest)
    return architectures.fit_model(manifest, model, chosen.state_dict), chosen.choice


def choose_weights(loaded: LoadedCheckpoint, expected: Collection[str], manifest: Manifest) -> ChosenWeights:
    """The one reading of ``loaded`` whose names are exactly ``expected`` (see the module doc)."""
    explicit = manifest.state_dict_key is not None or manifest.strip_prefix is not None
    if manifest.state_dict_key is not None:
        candidates = {manifest.state_dict_key: _explicit(loaded, manifest.state_dict_key)}
    else:
        candidates = dict(loaded.candidates)
    wanted = set(expected)
    readings = [
        (path, prefix)
        for path, state_dict in candidates.items()
        for prefix in _prefixes(state_dict, manifest.strip_prefix)
        if {key[len(prefix):] for key in state_dict} == wanted and len(state_dict) == len(wanted)
    ]
    if len(readings) > 1:
        shown = [_reading(path, prefix) for path, prefix in readings]
        raise AmbiguousWeights(
            f"{len(readings)} readings of the checkpoint fit architecture {quoted(manifest.architecture)} "
            f"({listing(shown)}); name one with the manifest's state_dict_key (and strip_prefix)",
            field="state_dict_key",
            candidates=[{"key_path": path, "stripped_prefix": prefix} for path, prefix in readings[:20]],
        )
    if readings:
        path, prefix = readings[0]
    else:  # nothing fits: the first candidate as it is, for check_state_dict to name the mismatch
        path = next(iter(candidates))
        prefix = manifest.strip_prefix or ""
        if not all(key.startswith(prefix) for key in candidates[path]):
            raise InvalidCheckpoint(
                f"not every weight name under {_reading(path, '')} starts with the manifest's "
                f"strip_prefix {quoted(prefix)}",
                field="strip_prefix",
            )
    state_dict = {key[len(prefix):]: tensor for key, tensor in candidates[path].items()}
    choice = WeightsChoice(
        key_path=path,
        stripped_prefix=prefix,
        ema=any(part in EMA_KEYS for part in path.split(".")),
        chosen_by="manifest" if explicit else "detected",
    )
    return ChosenWeights(state_dict=state_dict, choice=choice)


def _explicit(loaded: LoadedCheckpoint, key_path: str) -> dict[str, torch.Tensor]:
    if key_path in loaded.candidates:
        return loaded.candidates[key_path]
    return state_dict_at(loaded.content, key_path, DEFAULT_MAX_TENSORS)


def _prefixes(state_dict: Mapping[str, torch.Tensor], explicit: str | None) -> list[str]:
    """The empty prefix, then each longer run of leading components common to every key."""
    if explicit is not None:
        return [explicit] if all(key.startswith(explicit) for key in state_dict) else []
    prefixes = [""]
    parts = [key.split(".") for key in state_dict]
    for depth in range(1, MAX_STRIPPED + 1):
        heads = {tuple(p[:depth]) for p in parts if len(p) > depth}
        if len(heads) != 1 or any(len(p) <= depth for p in parts):
            break
        prefixes.append(".".join(heads.pop()) + ".")
    return prefixes


def _reading(path: str, prefix: str) -> str:
    where = quoted(path) if path else "the top-level dict"
    return f"{where}, prefix {quoted(prefix)} removed" if prefix else where


__all__ = ["MAX_STRIPPED", "ChosenWeights", "build_from_checkpoint", "choose_weights"]
