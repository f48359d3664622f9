"""Triton's ``config.pbtxt`` for the export package's model repository: the generator the Batch job
writes it with (:func:`triton_config`) and the check the deployments code runs on it
(:func:`check_triton_config`), with a reader of the protocol-buffer text format subset Triton uses
(:func:`parse_pbtxt`).

The convention, on both sides: with ``max_batch_size`` > 0 (a dynamic batch axis) Triton adds the
batch dimension itself, so ``dims`` leave it out; with 0 the dims are the full shape. Every other
dynamic dimension is -1. A tensor without dims left is ``dims: [ 1 ]`` with an empty ``reshape``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, NoReturn, Protocol

from heimdall.errors import ConversionError, PackageInconsistent
from heimdall.export_package.layout import TRITON_CONFIG_FILE_NAME, TRITON_MODEL_FILE_NAME
from heimdall.export_package.metadata import (
    TritonFacts,
    checked_literal,
    minus_one,
    shape_text,
    validated,
)

#: ``metadata.json`` dtype -> Triton ``data_type``.
TRITON_TYPES: Final[Mapping[str, str]] = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING",
}
#: ``config.pbtxt`` is read whole, so it has a cap of its own.
MAX_CONFIG_BYTES: Final = 1024**2


class TensorLike(Protocol):
    """A tensor as the job describes it (``heimdall.bundle.structural.TensorSpec``)."""

    @property
    def name(self) -> str: ...
    @property
    def elem_type(self) -> str: ...
    @property
    def shape(self) -> Sequence[int | str | None]: ...


# --- writing ------------------------------------------------------------------------------------------


def triton_config(
    model_name: str, inputs: Sequence[TensorLike], outputs: Sequence[TensorLike], *, max_batch_size: int
) -> str:
    """``triton/{model_name}/config.pbtxt`` for the ONNX Runtime backend.

    ``max_batch_size`` is 0 for a model without a dynamic batch axis. A tensor whose type Triton
    cannot serve, or a name that cannot be written unescaped, raises :class:`ConversionError`.
    """
    lines = [
        f'name: "{checked_literal(model_name, "model name")}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch_size}",
        f'default_model_filename: "{TRITON_MODEL_FILE_NAME}"',
    ]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        blocks = [_triton_tensor(t, batched=max_batch_size > 0) for t in tensors]
        lines.append(f"{kind} [\n" + ",\n".join(blocks) + "\n]")
    if max_batch_size > 0:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def _triton_tensor(tensor: TensorLike, *, batched: bool) -> str:
    data_type = TRITON_TYPES.get(tensor.elem_type)
    if data_type is None:
        raise ConversionError(f"{tensor.name!r} has type {tensor.elem_type}, which Triton cannot serve")
    dims = _triton_dims(tensor.shape, batched=batched)
    body = [f'    name: "{checked_literal(tensor.name, "tensor name")}"', f"    data_type: {data_type}"]
    if dims:
        body.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
    else:
        body += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "  {\n" + "\n".join(body) + "\n  }"


def _triton_dims(shape: Sequence[int | str | None], *, batched: bool) -> list[int]:
    return minus_one(shape[1:] if batched else shape)


# --- reading ------------------------------------------------------------------------------------------

_PBTXT_TOKEN: Final = re.compile(
    r"""(?P<space>\s+|\#[^\n]*)
      | (?P<punct>[{}\[\]:,;])
      | (?P<string>"(?:[^"\\\n]|\\.)*")
      | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)""",
    re.VERBOSE | re.ASCII,
)
_PBTXT_ESCAPES: Final[Mapping[str, str]] = {'"': '"', "\\": "\\", "'": "'", "n": "\n", "t": "\t"}
_PBTXT_MAX_DEPTH: Final = 16

PbValue = Any  # str | int | float | dict[str, list[PbValue]]


class _PbReader:
    """Protocol-buffer text format, the subset Triton configurations use: fields ``name: value``,
    messages ``name { ... }`` (colon optional), lists ``name: [ a, b ]`` / ``name [ {..}, {..} ]``,
    double-quoted strings, numbers, enum identifiers and ``#`` comments."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._tokens: list[tuple[str, Any, int]] = []
        position = 0
        while position < len(text):
            match = _PBTXT_TOKEN.match(text, position)
            if match is None:
                self._fail(position, f"unexpected {text[position : position + 20]!r}")
            kind = match.lastgroup
            value = match.group()
            if kind == "string":
                self._tokens.append(("value", self._unquote(value, position), position))
            elif kind == "number":
                number: int | float = int(value) if re.fullmatch(r"-?\d+", value) else float(value)
                self._tokens.append(("value", number, position))
            elif kind == "ident":
                self._tokens.append(("ident", value, position))
            elif kind == "punct":
                self._tokens.append(("punct", value, position))
            position = match.end()
        self._index = 0

    def parse(self) -> dict[str, list[PbValue]]:
        return self._message(closing=None, depth=0)

    def _fail(self, position: int, message: str) -> NoReturn:
        line = self._text.count("\n", 0, position) + 1
        raise PackageInconsistent(f"config.pbtxt line {line}: {message}", file=TRITON_CONFIG_FILE_NAME)

    def _unquote(self, token: str, position: int) -> str:
        body = token[1:-1]
        out: list[str] = []
        index = 0
        while index < len(body):
            char = body[index]
            if char == "\\":
                escaped = body[index + 1]
                if escaped not in _PBTXT_ESCAPES:
                    self._fail(position, f"unsupported escape \\{escaped} in a string")
                out.append(_PBTXT_ESCAPES[escaped])
                index += 2
            else:
                out.append(char)
                index += 1
        return "".join(out)

    def _peek(self) -> tuple[str, Any, int] | None:
        return self._tokens[self._index] if self._index < len(self._tokens) else None

    def _next(self, expected: str) -> tuple[str, Any, int]:
        token = self._peek()
        if token is None:
            self._fail(len(self._text), f"unexpected end, expected {expected}")
        self._index += 1
        return token

    def _is(self, token: tuple[str, Any, int] | None, punct: str) -> bool:
        return token is not None and token[0] == "punct" and token[1] == punct

    def _message(self, closing: str | None, depth: int) -> dict[str, list[PbValue]]:
        if depth > _PBTXT_MAX_DEPTH:
            token = self._peek()
            self._fail(token[2] if token else len(self._text), "messages nested too deeply")
        fields: dict[str, list[PbValue]] = {}
        while True:
            token = self._peek()
            if token is None:
                if closing is not None:
                    self._fail(len(self._text), f"unexpected end, expected {closing!r}")
                return fields
            if closing is not None and self._is(token, closing):
                self._index += 1
                return fields
            kind, name, position = self._next("a field name")
            if kind != "ident":
                self._fail(position, f"expected a field name, got {name!r}")
            colon = self._is(self._peek(), ":")
            if colon:
                self._index += 1
            following = self._peek()
            if self._is(following, "["):
                self._index += 1
                fields.setdefault(name, []).extend(self._list(depth))
            elif self._is(following, "{"):
                self._index += 1
                fields.setdefault(name, []).append(self._message("}", depth + 1))
            elif colon:
                fields.setdefault(name, []).append(self._scalar())
            else:
                where = following[2] if following else len(self._text)
                self._fail(where, f"expected ':' or '{{' after {name!r}")
            if self._is(self._peek(), ",") or self._is(self._peek(), ";"):
                self._index += 1

    def _list(self, depth: int) -> list[PbValue]:
        values: list[PbValue] = []
        if self._is(self._peek(), "]"):
            self._index += 1
            return values
        while True:
            if self._is(self._peek(), "{"):
                self._index += 1
                values.append(self._message("}", depth + 1))
            else:
                values.append(self._scalar())
            kind, value, position = self._next("',' or ']'")
            if kind == "punct" and value == "]":
                return values
            if kind != "punct" or value != ",":
                self._fail(position, f"expected ',' or ']' in a list, got {value!r}")

    def _scalar(self) -> PbValue:
        kind, value, position = self._next("a value")
        if kind == "punct":
            self._fail(position, f"expected a value, got {value!r}")
        return value


def parse_pbtxt(text: str) -> dict[str, list[Any]]:
    """Read a Triton ``config.pbtxt``: every field maps to the list of its values (messages are
    dicts of the same kind). Raises :class:`PackageInconsistent` naming the line of a syntax error."""
    if len(text) > MAX_CONFIG_BYTES:
        raise PackageInconsistent("config.pbtxt is over the size limit", file=TRITON_CONFIG_FILE_NAME)
    return _PbReader(text).parse()


def _single(fields: Mapping[str, list[Any]], key: str, kind: type, where: str) -> Any:
    values = fields.get(key, [])
    if len(values) != 1 or not isinstance(values[0], kind) or isinstance(values[0], bool):
        shown = values[0] if len(values) == 1 else values
        raise PackageInconsistent(
            f"config.pbtxt: {where} needs one {key} ({kind.__name__}), has {shown!r}",
            file=TRITON_CONFIG_FILE_NAME,
        )
    return values[0]


def check_triton_config(config_text: str, metadata: Mapping[str, Any]) -> None:
    """Check that a Triton ``config.pbtxt`` agrees with ``metadata.json``'s model, inputs and outputs.

    The convention is the generator's (see the module's docstring). Raises
    :class:`PackageInconsistent` naming the first disagreement.
    """
    facts = validated(TritonFacts, metadata)
    config = parse_pbtxt(config_text)

    def fail(message: str) -> PackageInconsistent:
        return PackageInconsistent(
            f"config.pbtxt disagrees with metadata.json: {message}", file=TRITON_CONFIG_FILE_NAME
        )

    name = _single(config, "name", str, "the model")
    if name != facts.model.name:
        raise fail(f"it names the model {name!r}, metadata.json {facts.model.name!r}")
    platform = config.get("platform", [])
    backend = config.get("backend", [])
    if platform != ["onnxruntime_onnx"] and backend != ["onnxruntime"]:
        raise fail(
            f"the model is not served by the ONNX Runtime backend (platform {platform}, backend {backend})"
        )
    default_file = config.get("default_model_filename", [TRITON_MODEL_FILE_NAME])
    if default_file != [TRITON_MODEL_FILE_NAME]:
        raise fail(
            f"default_model_filename is {default_file}, the repository holds {TRITON_MODEL_FILE_NAME!r}"
        )
    max_batch = _single(config, "max_batch_size", int, "the model")
    if max_batch < 0:
        raise fail(f"max_batch_size is {max_batch}")
    batched = max_batch > 0
    if facts.dynamic_batch and not batched:
        raise fail("metadata.json declares a dynamic batch axis but max_batch_size is 0")
    if not facts.dynamic_batch and batched:
        raise fail(
            f"metadata.json declares a fixed batch size but max_batch_size is {max_batch} (Triton would add "
            "a batch dimension the model does not have)"
        )
    for kind, tensors in (("input", facts.inputs), ("output", facts.outputs)):
        declared = config.get(kind, [])
        if not all(isinstance(entry, dict) for entry in declared):
            raise fail(f"its {kind} list holds something other than tensor messages")
        if len(declared) != len(tensors):
            shown = [entry.get("name", ["?"])[0] for entry in declared]
            raise fail(
                f"it declares {len(declared)} {kind}(s) {shown}, metadata.json {len(tensors)} "
                f"{[t.name for t in tensors]}"
            )
        for position, (entry, tensor) in enumerate(zip(declared, tensors, strict=True)):
            entry_name = _single(entry, "name", str, f"{kind} {position}")
            if entry_name != tensor.name:
                raise fail(f"{kind} {position} is named {entry_name!r}, metadata.json says {tensor.name!r}")
            label = f"{kind} {tensor.name!r}"
            data_type = _single(entry, "data_type", str, label)
            if data_type != TRITON_TYPES[tensor.dtype]:
                raise fail(
                    f"{label} has data_type {data_type}, metadata.json's {tensor.dtype} is "
                    f"{TRITON_TYPES[tensor.dtype]}"
                )
            if batched and (not tensor.shape or isinstance(tensor.shape[0], int)):
                raise fail(
                    f"{label} has shape {shape_text(tensor.shape)} in metadata.json, without a dynamic "
                    f"first dimension, but max_batch_size {max_batch} makes Triton add one"
                )
            dims = entry.get("dims", [])
            if not all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
                raise fail(f"{label} has dims {dims}, not integers")
            expected = _triton_dims(tensor.shape, batched=batched)
            reshape = entry.get("reshape", [])
            convention = (
                f"max_batch_size {max_batch}: Triton adds the batch dimension"
                if batched
                else "max_batch_size 0"
            )
            if expected:
                if dims != expected:
                    raise fail(
                        f"{label} has dims {dims}; metadata.json's shape {shape_text(tensor.shape)} gives "
                        f"{expected} ({convention})"
                    )
                if reshape:
                    raise fail(f"{label} is reshaped to {reshape}, which its shape does not call for")
            elif dims != [1] or reshape not in ([{"shape": []}], [{}]):
                raise fail(
                    f"{label} has no dimension left ({convention}): it needs dims [1] and an empty reshape, "
                    f"has dims {dims} and reshape {reshape}"
                )
