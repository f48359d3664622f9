"""The child process of the structural pass: ``python -m heimdall.bundle._structural_worker``.

Run only by :func:`heimdall.bundle.structural.check_structure`. It reads one JSON request on stdin
(``path``, ``expected_sha256``, ``expected_size``, ``limits``, ``memory_bytes``, ``cpu_seconds``),
holds itself to the memory and CPU limits *before* importing onnx or reading the model, checks the
model, and writes exactly one JSON line to the stdout it was started with::

    {"ok": true, "report": {...}}                      # StructuralReport fields
    {"ok": false, "code": "EXTERNAL_DATA", "message": "...", "field": null, "details": {}}

Anything else the process (or a native library) prints goes to stderr: the worker moves its own
stdout there first, so the result line cannot be corrupted. The exit status is 0 whenever a result
line was written, including rejections; the parent treats a missing line as a crash. This protocol and
the limits are :func:`heimdall.bundle._worker_protocol.serve`'s, shared with the serving check.

The checks, in order, each refusing with a typed error of :mod:`heimdall.errors`:

1. size ≤ ``max_onnx_bytes`` (``TooLarge``) before reading; then sha256 and size against what was
   declared (``ChecksumMismatch``, both values in the message);
2. the bytes parse as a ``ModelProto`` with a graph (``InvalidOnnx``). The model is parsed from the
   bytes already read (``onnx.load_model_from_string``), which never resolves external data, the
   same as ``onnx.load(..., load_external_data=False)`` without reading the file twice;
3. no tensor anywhere points at external data (``ExternalData``): initializers, sparse initializers,
   every tensor-valued attribute of every node (``Constant`` included), every subgraph of every
   attribute (``If``/``Loop``/``Scan`` bodies, recursively), model-local functions (their nodes and
   default attributes) and training-info graphs;
4. node count ≤ ``max_nodes`` over all of those graphs, and subgraph nesting ≤
   ``max_subgraph_depth`` (``GraphTooComplex``). The walk is iterative, so no input can exhaust the
   Python stack; protobuf itself refuses messages nested more than 100 deep while parsing;
5. every ``opset_import`` domain (model and functions) and every node domain is allowed
   (``InvalidOnnx``). Besides ``limits.allowed_domains`` (where ``""`` and ``"ai.onnx"`` are one
   domain), a node may call a *model-local function* in any domain when its
   ``(domain, op_type, overload)`` names a function defined in the model, and an ``opset_import``
   may name a domain that only such functions use: a local function is ONNX made of other ONNX
   nodes, checked the same way, and needs no custom-op library. A node in such a domain that is
   not one of the model's functions is refused;
6. ``onnx.checker.check_model(full_check=True)`` (``InvalidOnnx`` with the checker's message).

Declared opset and shapes are compared by the parent against the report (pure Python, see
:func:`heimdall.bundle.structural.check_declared`). No ONNX Runtime session is ever created here.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from heimdall.bundle._worker_protocol import WorkerState, serve, trim_message
from heimdall.errors import (
    ChecksumMismatch,
    ConfigurationError,
    ExternalData,
    GraphTooComplex,
    InvalidOnnx,
    TooLarge,
)

if TYPE_CHECKING:  # pragma: no cover - annotations only; onnx is imported after the limits apply
    from onnx import AttributeProto, FunctionProto, GraphProto, ModelProto, NodeProto, TensorProto, TypeProto

_MAX_NAME_CHARS = 80
_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})
_READ_CHUNK = 8 * 1024 * 1024


def main() -> int:
    """Run one structural check as described in the module docstring; return the exit status."""
    return serve(check_model)


# --- the checks ----------------------------------------------------------------------------------


def check_model(request: dict[str, Any]) -> dict[str, Any]:
    limits = request["limits"]
    max_bytes = int(limits["max_onnx_bytes"])
    path = str(request["path"])

    WorkerState.stage = "reading the model file"
    with open(path, "rb") as handle:
        data, sha256 = read_capped(handle, max_bytes)
    check_integrity(data, sha256, request.get("expected_sha256"), request.get("expected_size"))

    WorkerState.stage = "importing onnx"
    try:
        import onnx  # noqa: PLC0415 - imported only once the memory limit holds
        import onnx.checker  # noqa: PLC0415
    except ModuleNotFoundError as exc:
        raise ConfigurationError(
            f"the structural check needs the onnx package (the onnx layer), which is missing: {exc}"
        ) from None
    except ImportError as exc:
        # A shared library that cannot be mapped under the address-space limit surfaces as an
        # ImportError ("failed to map segment", "cannot allocate memory"), not a MemoryError.
        raise MemoryError(str(exc)) from None

    WorkerState.stage = "parsing the model"
    model = _parse(onnx, data)

    WorkerState.stage = "walking the graph"
    walk = _walk(model)
    if walk.external:
        raise ExternalData(walk.external, tensor=walk.external_tensor)
    _check_complexity(walk, int(limits["max_nodes"]), int(limits["max_subgraph_depth"]))
    _check_domains(model, walk, tuple(limits["allowed_domains"]))

    report = {
        "onnx_sha256": sha256,
        "size_bytes": len(data),
        "ir_version": int(model.ir_version),
        "opset": default_opset(model),
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "node_count": walk.nodes,
        "subgraph_depth": walk.depth,
        "domains": sorted({_display_domain(o.domain) for o in model.opset_import}),
        "inputs": [_spec(v.name, v.type) for v in _graph_inputs(model.graph)],
        "outputs": [_spec(v.name, v.type) for v in model.graph.output],
    }
    del model  # the checker parses its own copy from the bytes; do not hold two models at once

    WorkerState.stage = "running onnx.checker"
    try:
        onnx.checker.check_model(data, full_check=True)
    except MemoryError:
        raise
    except Exception as exc:  # ValidationError, InferenceError, and whatever the C++ side throws
        if "bad_alloc" in str(exc):  # an allocation failure the bindings did not turn into MemoryError
            raise MemoryError(str(exc)) from None
        raise InvalidOnnx(trim_message(f"onnx.checker refused the model: {exc}")) from None
    return report


def read_capped(handle: BinaryIO, max_bytes: int) -> tuple[bytes, str]:
    """Read the whole file if it is at most ``max_bytes`` (checked before reading) and hash it."""
    size = os.fstat(handle.fileno()).st_size
    if size > max_bytes:
        raise TooLarge(
            f"the ONNX model is {size} bytes; the limit is {max_bytes} bytes (max_onnx_bytes)",
            size_bytes=size,
            limit_bytes=max_bytes,
        )
    # Read exactly the size fstat gave (read(n) reserves n bytes up front, so never ask for the cap).
    data = handle.read(size)
    if len(data) != size or handle.read(1):
        raise InvalidOnnx("the ONNX model file changed while it was being read")
    digest = hashlib.sha256()
    view = memoryview(data)
    for start in range(0, len(data), _READ_CHUNK):
        digest.update(view[start : start + _READ_CHUNK])
    view.release()
    return data, digest.hexdigest()


def check_integrity(data: bytes, sha256: str, expected_sha256: Any, expected_size: Any) -> None:
    if expected_sha256 is not None and str(expected_sha256).lower() != sha256:
        raise ChecksumMismatch(
            f"the ONNX model's sha256 is {sha256} but {expected_sha256} was declared",
            field="integrity.onnx_sha256",
            expected=str(expected_sha256),
            actual=sha256,
        )
    if expected_size is not None and int(expected_size) != len(data):
        raise ChecksumMismatch(
            f"the ONNX model is {len(data)} bytes but {expected_size} bytes were declared",
            field="integrity.onnx_size_bytes",
            expected=int(expected_size),
            actual=len(data),
        )


def _parse(onnx: Any, data: bytes) -> ModelProto:
    if not data:
        raise InvalidOnnx("not an ONNX model: the file is empty")
    try:
        model: ModelProto = onnx.load_model_from_string(data)
    except MemoryError:
        raise
    except Exception as exc:  # google.protobuf DecodeError and friends
        if "alloc" in str(exc).lower():  # upb: "Error parsing message ...: Arena alloc failed"
            raise MemoryError(str(exc)) from None
        _raise_if_short_of_memory(len(data))
        raise InvalidOnnx(trim_message(f"not an ONNX model: {exc}")) from None
    if not model.HasField("graph"):
        raise InvalidOnnx("not an ONNX model: the message has no graph")
    return model


def _raise_if_short_of_memory(size: int) -> None:
    """Tell a parse that failed for lack of memory apart from one that failed on bad bytes.

    The protobuf runtime reports an allocation failure while parsing as an ordinary decode error.
    If the parse could not have had the memory it needed (about the size of the input), call it
    what it is, so a large valid model is not refused as "not an ONNX model".
    """
    try:
        probe = bytearray(size)
    except MemoryError:
        raise MemoryError("parsing needs more memory than is left") from None
    del probe


@dataclass
class _Walk:
    """What the iterative walk over every graph of the model found."""

    nodes: int = 0
    depth: int = 0
    deepest: str = ""
    #: The message for the first tensor found to use external data ("" when none does).
    external: str = ""
    external_tensor: str = ""
    #: (domain, op_type, overload) of nodes outside the default domain, with where each was first seen.
    calls: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def found_external(self, tensor: TensorProto, where: str) -> None:
        """Record ``tensor`` (at ``where``) as using external data, if it is the first found."""
        if self.external:
            return
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        pointing = f" (location {_q(location)})" if location else ""
        self.external = f"{where} uses external data{pointing}; a bundle must embed every tensor in the model"
        self.external_tensor = tensor.name[:_MAX_NAME_CHARS]


def _walk(model: ModelProto) -> _Walk:
    """Visit every graph, node, attribute and tensor once, with an explicit stack.

    Locations for messages are built only when something is found, and never chain their parents
    (a location naming every enclosing graph would grow with the nesting, for every subgraph).
    """
    from onnx import GraphProto  # noqa: PLC0415 - onnx is loaded by now

    walk = _Walk()
    # (graph or function body, nesting depth, where it is) for every graph still to visit.
    stack: list[tuple[GraphProto | FunctionProto, int, str]] = [
        (model.graph, 0, f"graph {_q(model.graph.name)}")
    ]
    for function in model.functions:
        where = f"function {_q(function.domain + '.' + function.name)}"
        stack.append((function, 0, where))
        for attr in function.attribute_proto:
            _visit_attribute(walk, stack, attr, 0, node=None, where=where)
    for index, info in enumerate(model.training_info):
        stack.append((info.initialization, 0, f"training_info[{index}].initialization"))
        stack.append((info.algorithm, 0, f"training_info[{index}].algorithm"))

    while stack:
        graph, depth, where = stack.pop()
        if depth > walk.depth:
            walk.depth, walk.deepest = depth, where
        if isinstance(graph, GraphProto):
            for tensor in graph.initializer:
                if _uses_external_data(tensor):
                    walk.found_external(tensor, f"initializer {_q(tensor.name)} of {where}")
            for sparse in graph.sparse_initializer:
                for tensor in (sparse.values, sparse.indices):
                    if _uses_external_data(tensor):
                        walk.found_external(tensor, f"sparse initializer {_q(sparse.values.name)} of {where}")
        for node in graph.node:
            walk.nodes += 1
            if node.domain not in _DEFAULT_DOMAINS:
                call = (node.domain, node.op_type, node.overload)
                if call not in walk.calls:
                    walk.calls[call] = f"{_node_label(node)} in {where}"
            for attr in node.attribute:
                _visit_attribute(walk, stack, attr, depth, node=node, where=where)
    return walk


def _visit_attribute(
    walk: _Walk,
    stack: list[tuple[GraphProto | FunctionProto, int, str]],
    attr: AttributeProto,
    depth: int,
    *,
    node: NodeProto | None,
    where: str,
) -> None:
    """Check an attribute's tensors and queue its subgraphs (``node`` is None for a function default)."""

    def owner() -> str:
        holder = f"{_node_label(node)} in {where}" if node is not None else f"the defaults of {where}"
        return f"attribute {_q(attr.name)} of {holder}"

    # Look at every field whatever ``attr.type`` claims: a hostile model may fill a field its type
    # does not announce, and a runtime may still read it.
    tensors = [attr.t] if attr.HasField("t") else []
    for tensor in [*tensors, *attr.tensors]:
        if _uses_external_data(tensor):
            walk.found_external(tensor, f"tensor {_q(tensor.name)} in {owner()}")
    sparse_tensors = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
    for sparse in [*sparse_tensors, *attr.sparse_tensors]:
        for tensor in (sparse.values, sparse.indices):
            if _uses_external_data(tensor):
                walk.found_external(tensor, f"sparse tensor {_q(sparse.values.name)} in {owner()}")
    subgraphs = [attr.g] if attr.HasField("g") else []
    for graph in [*subgraphs, *attr.graphs]:
        # Named by its own node only: chaining every enclosing location would grow with the depth.
        holder = _node_label(node) if node is not None else where
        label = f"subgraph {_q(graph.name)} of attribute {_q(attr.name)} of {holder}"
        stack.append((graph, depth + 1, label))


def _uses_external_data(tensor: TensorProto) -> bool:
    """Whether ``tensor`` points at data outside the model, by its location or its external_data."""
    from onnx import TensorProto  # noqa: PLC0415 - onnx is loaded by now

    return tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data) > 0


def _node_label(node: NodeProto) -> str:
    return f"node {_q(node.name or node.op_type)} ({_q(node.op_type)})"


def _check_complexity(walk: _Walk, max_nodes: int, max_depth: int) -> None:
    if walk.nodes > max_nodes:
        raise GraphTooComplex(
            f"the model has {walk.nodes} nodes (subgraphs and functions included); the limit is "
            f"{max_nodes} (max_nodes)",
            node_count=walk.nodes,
            limit=max_nodes,
        )
    if walk.depth > max_depth:
        raise GraphTooComplex(
            f"subgraphs are nested {walk.depth} deep (at {walk.deepest}); the limit is {max_depth} "
            f"(max_subgraph_depth)",
            subgraph_depth=walk.depth,
            limit=max_depth,
        )


def _check_domains(model: ModelProto, walk: _Walk, allowed_domains: tuple[str, ...]) -> None:
    allowed = set(allowed_domains)
    if allowed & _DEFAULT_DOMAINS:
        allowed |= _DEFAULT_DOMAINS
    functions = {(f.domain, f.name, f.overload) for f in model.functions}
    function_domains = {f.domain for f in model.functions}
    shown = ", ".join(repr(_display_domain(d)) for d in sorted(allowed)) or "none"

    imports: list[tuple[str, str]] = [(o.domain, "the model's opset_import") for o in model.opset_import]
    for function in model.functions:
        where = f"the opset_import of function {_q(function.domain + '.' + function.name)}"
        imports.extend((o.domain, where) for o in function.opset_import)
    for domain, where in imports:
        if domain not in allowed and domain not in function_domains:
            raise InvalidOnnx(
                f"{where} names the operator domain {_q(domain)}, which is not allowed (allowed: {shown})",
                domain=domain[:_MAX_NAME_CHARS],
            )
    for call, where in walk.calls.items():
        domain, op_type, _ = call
        if domain not in allowed and call not in functions:
            raise InvalidOnnx(
                f"{where} uses the operator domain {_q(domain)} (op {_q(op_type)}), which is not allowed "
                f"and is not a function defined in the model (allowed: {shown})",
                domain=domain[:_MAX_NAME_CHARS],
            )


def default_opset(model: ModelProto) -> int:
    """The default-domain opset the model imports, or 0 if it imports none."""
    versions = [int(o.version) for o in model.opset_import if o.domain in _DEFAULT_DOMAINS]
    return max(versions, default=0)


def _display_domain(domain: str) -> str:
    return "ai.onnx" if domain == "" else domain


def _graph_inputs(graph: GraphProto) -> Iterator[Any]:
    """The graph's real inputs: those that are not also initializers (IR < 4 lists both)."""
    constants = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    return (value for value in graph.input if value.name not in constants)


def _spec(name: str, type_proto: TypeProto) -> dict[str, Any]:
    """A TensorSpec as a dict: element type name, dims (int, symbol or None), and whether rank is known."""
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        tensor_type = getattr(type_proto, kind)
        elem = _elem_name(tensor_type.elem_type)
        if kind == "sparse_tensor_type":
            elem = f"sparse({elem})"
        if tensor_type.HasField("shape"):
            shape = [_dim(d) for d in tensor_type.shape.dim]
            return {"name": name, "elem_type": elem, "shape": shape, "rank_known": True}
        return {"name": name, "elem_type": elem, "shape": [], "rank_known": False}
    return {"name": name, "elem_type": _type_name(type_proto), "shape": [], "rank_known": False}


def _dim(dim: Any) -> int | str | None:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    if dim.HasField("dim_param") and dim.dim_param:
        return str(dim.dim_param)[:_MAX_NAME_CHARS]
    return None


def _elem_name(elem_type: int) -> str:
    """``float32``, ``int64``, ``float16``, ``bfloat16``, ``bool``, ``string``... from a TensorProto enum."""
    from onnx import TensorProto  # noqa: PLC0415 - onnx is loaded by now

    try:
        name = str(TensorProto.DataType.Name(elem_type)).lower()
    except ValueError:
        return f"unknown({elem_type})"
    return {"float": "float32", "double": "float64"}.get(name, name)


def _type_name(type_proto: TypeProto, depth: int = 0) -> str:
    """A readable name for a non-tensor type: ``sequence(float32)``, ``map(int64,float32)``..."""
    kind = type_proto.WhichOneof("value")
    if depth > 8 or kind is None:
        return "undefined" if kind is None else "..."
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem = _elem_name(getattr(type_proto, kind).elem_type)
        return elem if kind == "tensor_type" else f"sparse({elem})"
    if kind == "sequence_type":
        return f"sequence({_type_name(type_proto.sequence_type.elem_type, depth + 1)})"
    if kind == "optional_type":
        return f"optional({_type_name(type_proto.optional_type.elem_type, depth + 1)})"
    if kind == "map_type":
        key = _elem_name(type_proto.map_type.key_type)
        return f"map({key},{_type_name(type_proto.map_type.value_type, depth + 1)})"
    return str(kind)


def _q(text: str) -> str:
    """Quote a name from the model for a message, cut short: names are attacker-controlled."""
    if len(text) > _MAX_NAME_CHARS:
        text = text[:_MAX_NAME_CHARS] + "..."
    return repr(text)


if __name__ == "__main__":
    sys.exit(main())
