"""Property tests: generated metadata round-trips; no input makes the reader fail untyped."""

from __future__ import annotations

import base64
import io
import json
import string
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heimdall.bundle import ComponentSelection, parse_metadata, read_bundle, write_bundle
from heimdall.bundle.models import carries_nothing
from heimdall.errors import BundleError
from heimdall.testing.sample_bundles import SEED_FALLBACKS, sample_bundle_metadata

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
small_text = st.text(alphabet=string.ascii_letters + string.digits + " -_éü中", min_size=1, max_size=30)
display_text = small_text.filter(str.strip)
json_leaf = st.none() | st.booleans() | st.integers(-(10**12), 10**12) | finite | small_text
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(small_text, inner, max_size=4),
    max_leaves=12,
)
extras = st.dictionaries(small_text.map(lambda s: "x_" + s), json_value, max_size=3)
dim = st.integers(1, 4096) | st.just(-1) | st.sampled_from(["batch", "N", "seq"])
shape = st.lists(dim, min_size=1, max_size=5)


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, Any]:
    meta = sample_bundle_metadata(seed=draw(st.integers(0, 1000)), num_samples=draw(st.integers(1, 10)))
    # Display text: a blank name or version is refused (tests/unit/test_sender_names.py).
    meta["model"]["model_name"] = draw(display_text)
    meta["model"]["version"] = draw(display_text)
    meta["model"]["onnx_opset"] = draw(st.integers(7, 23))
    meta["model"]["input_shape"] = draw(shape)
    meta["model"]["output_shape"] = draw(st.lists(shape, min_size=1, max_size=4))
    meta["model"].update(draw(extras))
    meta.update(draw(extras))
    meta["bundle_metadata"]["description"] = draw(st.none() | st.text(max_size=200))
    meta["training_config"]["learning_rate"] = draw(finite)
    meta["performance_metrics"]["final_val_loss"] = draw(st.none() | finite)
    n = draw(st.integers(1, 4))
    meta["normalization_stats"] = {
        "feature_means": draw(st.lists(finite, min_size=n, max_size=n)),
        "feature_stds": draw(st.lists(st.floats(1e-6, 1e6), min_size=n, max_size=n)),
    }
    for component in ("training_config", "performance_metrics", "normalization_stats", "sample_predictions"):
        if draw(st.booleans()):
            del meta[component]
    return meta


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meta=metadata(), onnx=st.binary(min_size=1, max_size=3000), compress=st.booleans())
def test_generated_metadata_round_trips(meta: dict[str, Any], onnx: bytes, compress: bool) -> None:
    bundle, _ = parse_metadata(meta)
    out = io.BytesIO()
    written = write_bundle(bundle, onnx, out, compress=compress)
    sink = io.BytesIO()
    result = read_bundle(out.getvalue(), onnx_sink=sink)
    assert sink.getvalue() == onnx
    assert result.onnx_sha256 == written.onnx_sha256
    assert result.bundle == written.bundle
    # A second cycle changes nothing at all: the writer's output is a fixed point.
    again = io.BytesIO()
    write_bundle(result.bundle, onnx, again, compress=compress)
    assert again.getvalue() == out.getvalue()


@settings(max_examples=40, deadline=None)
@given(meta=metadata(), keep=st.sets(st.sampled_from(["training_config", "performance_metrics",
                                                       "normalization_stats", "sample_predictions"])),
       n=st.integers(1, 10))
def test_selection_keeps_exactly_what_was_asked(meta: dict[str, Any], keep: set[str], n: int) -> None:
    bundle, _ = parse_metadata(meta)
    out = io.BytesIO()
    write_bundle(bundle, b"onnx", out, selection=ComponentSelection.only(keep, num_samples=n))
    result = read_bundle(out.getvalue()).bundle
    assert set(result.components()) == keep & set(bundle.components())
    if result.sample_predictions is not None and bundle.sample_predictions is not None:
        assert len(result.sample_predictions) == min(n, len(bundle.sample_predictions))


COMPONENT_NAMES = list(SEED_FALLBACKS)
empty_value: st.SearchStrategy[list[object] | dict[str, object] | None] = st.sampled_from([None, [], {}])


@st.composite
def seed_component(draw: st.DrawFn, name: str, full: Any) -> tuple[Any, bool]:
    """A component as the original exporter may write it, and whether it carries anything."""
    kind = draw(st.sampled_from(["fallback", "emptied", "partial", "full"]))
    if kind == "fallback":
        return SEED_FALLBACKS[name], False
    if kind == "emptied":  # every field null, [] or {}, unknown ones included
        if name == "sample_predictions":
            return draw(st.sampled_from([[], None])), False
        keys = [*SEED_FALLBACKS[name], *draw(st.lists(small_text.map(lambda s: "x_" + s), max_size=2))]
        return {key: draw(empty_value) for key in keys}, False
    if kind == "partial" and isinstance(full, dict):
        keep = draw(st.sets(st.sampled_from(sorted(full)), min_size=1))
        return {**SEED_FALLBACKS[name], **{k: full[k] for k in keep}}, True
    return full, True


@settings(max_examples=80, deadline=None)
@given(data=st.data(), compress=st.booleans())
def test_seed_fallbacks_read_as_absent_and_round_trip(data: st.DataObject, compress: bool) -> None:
    meta = sample_bundle_metadata(seed=data.draw(st.integers(0, 100)))
    carried = []
    for name in COMPONENT_NAMES:
        meta[name], carries = data.draw(seed_component(name, meta[name]), label=name)
        if carries:
            carried.append(name)
    bundle, _ = parse_metadata(meta)
    assert bundle.components() == carried
    assert not any(carries_nothing(getattr(bundle, name)) for name in bundle.components())
    out = io.BytesIO()
    write_bundle(bundle, b"onnx", out, compress=compress)
    again = read_bundle(out.getvalue())
    assert again.bundle.components() == carried
    assert again.bundle.model_dump(exclude={"integrity"}) == bundle.model_dump(exclude={"integrity"})


def _valid_bytes() -> bytes:
    doc = sample_bundle_metadata()
    doc["model"]["onnx_model_base64"] = base64.b64encode(b"model-bytes" * 20).decode()
    return json.dumps(doc).encode()


VALID = _valid_bytes()


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_random_bytes_only_ever_raise_bundle_errors(data: bytes) -> None:
    try:
        read_bundle(data)
    except BundleError as exc:
        assert exc.code and exc.message
    # (a random byte string that happens to be a valid bundle would simply read)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_bundles_only_ever_raise_bundle_errors(data: st.DataObject) -> None:
    buf = bytearray(VALID)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "delete", "insert", "truncate"]))
        pos = data.draw(st.integers(0, len(buf) - 1))
        if op == "flip":
            buf[pos] = data.draw(st.integers(0, 255))
        elif op == "delete":
            del buf[pos : pos + data.draw(st.integers(1, 20))]
        elif op == "insert":
            tokens = [b"{", b"}", b"[", b'"', b"\\", b",", b":", b"NaN", b"\xff"]
            buf[pos:pos] = data.draw(st.sampled_from(tokens))
        else:
            del buf[pos:]
        if not buf:
            buf = bytearray(b" ")
    try:
        read_bundle(bytes(buf))
    except BundleError as exc:
        assert exc.code and exc.message
