"""The bundle format: both dialects, round trips, component selection, the integrity pass's refusals."""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pybase64
import pytest

from heimdall.bundle import Bundle, ComponentSelection, parse_metadata, read_bundle, write_bundle
from heimdall.bundle import scanner as scanner_module
from heimdall.bundle.dialects import Dialect, detect_dialect
from heimdall.bundle.models import Component
from heimdall.errors import (
    BundleError,
    ChecksumMismatch,
    InvalidBundle,
    InvalidJson,
    TooLarge,
    UnsupportedVersion,
)
from heimdall.settings import BundleLimits
from heimdall.testing.sample_bundles import (
    SEED_FALLBACKS,
    legacy_bundle_metadata,
    sample_bundle,
    sample_bundle_metadata,
)
from heimdall.testing.sample_models import localization_net_onnx

ONNX = bytes(range(256)) * 40 + b"tail"  # the integrity pass does not parse ONNX; any bytes will do


def raw_document(meta: dict[str, Any], onnx: bytes = ONNX, **model_extra: Any) -> dict[str, Any]:
    """A bundle document built by hand (not by our writer), as another system would write it."""
    doc = copy.deepcopy(meta)
    doc["model"]["onnx_model_base64"] = base64.b64encode(onnx).decode()
    doc["model"].update(model_extra)
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def written(meta: dict[str, Any] | None = None, onnx: bytes = ONNX, **kwargs: Any) -> bytes:
    bundle, _ = parse_metadata(meta or sample_bundle_metadata())
    out = io.BytesIO()
    write_bundle(bundle, onnx, out, **kwargs)
    return out.getvalue()


# --- dialects -------------------------------------------------------------------------------------


def test_canonical_document_reads_as_canonical() -> None:
    meta = sample_bundle_metadata()
    result = read_bundle(encode(raw_document(meta)))
    assert result.dialect == "canonical"
    assert result.onnx_sha256 == hashlib.sha256(ONNX).hexdigest()
    assert result.onnx_size_bytes == len(ONNX)
    assert result.bundle.model.output_shape == [[1, 2], [1, 2]]
    assert result.bundle.components() == [
        "training_config", "performance_metrics", "normalization_stats", "sample_predictions"
    ]
    assert not result.integrity_declared


def test_legacy_dialect_is_normalised() -> None:
    meta = legacy_bundle_metadata()
    assert detect_dialect(meta) == "legacy"
    result = read_bundle(encode(raw_document(meta)))
    bundle = result.bundle
    assert result.dialect == "legacy"
    assert bundle.bundle_metadata.created_by == "trainer@heimdall"
    assert bundle.bundle_metadata.model_extra is not None
    assert "exported_by" not in bundle.bundle_metadata.model_extra
    assert bundle.model.version == "1"
    assert bundle.model.output_shape == [[1, 2]]
    assert bundle.model.framework == "onnx"  # kept: the legacy writer did not record the source framework
    training = bundle.training_config
    assert training is not None
    assert training.dataset_ids == [meta["training_config"]["dataset_id"]]
    assert training.dataset_names == ["Synthetic 10k"]
    assert training.early_stopping is True and training.early_stopping_patience == 5
    metrics = bundle.performance_metrics
    assert metrics is not None
    # final_* were null: taken from the last non-null epoch of each list.
    assert metrics.final_train_loss == meta["performance_metrics"]["train_loss"][-1]
    assert metrics.final_val_loss == meta["performance_metrics"]["val_loss"][-1]
    assert metrics.val_loss is not None and metrics.val_loss[2] is None
    samples = bundle.sample_predictions
    assert samples is not None and len(samples) == 3
    first = samples[0]
    assert first.input_metadata == meta["sample_predictions"][0]["input"]
    assert first.ground_truth == {
        "latitude": meta["sample_predictions"][0]["ground_truth"]["lat"],
        "longitude": meta["sample_predictions"][0]["ground_truth"]["lon"],
    }
    assert first.prediction is not None and "uncertainty_x" in first.prediction
    # Invented sample ids are derived from content: reading twice gives the same ids.
    again = read_bundle(encode(raw_document(meta))).bundle.sample_predictions
    assert again is not None
    assert [s.sample_id for s in samples] == [s.sample_id for s in again]
    assert len({s.sample_id for s in samples}) == 3


def test_legacy_bundle_rewritten_is_canonical_and_keeps_the_model() -> None:
    first = read_bundle(encode(raw_document(legacy_bundle_metadata())))
    out = io.BytesIO()
    write_bundle(first.bundle, ONNX, out)
    second = read_bundle(out.getvalue())
    assert second.dialect == "canonical"
    assert second.onnx_sha256 == first.onnx_sha256
    assert second.integrity_declared
    dump = second.bundle.model_dump(exclude={"integrity", "bundle_metadata"})
    assert dump == first.bundle.model_dump(exclude={"integrity", "bundle_metadata"})


def test_unknown_fields_survive_a_read_write_cycle() -> None:
    meta = sample_bundle_metadata()
    meta["x_vendor"] = {"nested": [1, 2, {"deep": True}]}
    meta["bundle_metadata"]["x_origin"] = "instance-b"
    meta["performance_metrics"]["x_custom_metric"] = 0.5
    meta["sample_predictions"][0]["x_note"] = "kept"
    doc = raw_document(meta, x_model_extra="also kept")
    data = written(read_bundle(encode(doc)).bundle.model_dump(mode="json"))
    text = json.loads(data)
    assert text["x_vendor"] == {"nested": [1, 2, {"deep": True}]}
    assert text["bundle_metadata"]["x_origin"] == "instance-b"
    assert text["performance_metrics"]["x_custom_metric"] == 0.5
    assert text["sample_predictions"][0]["x_note"] == "kept"
    assert text["model"]["x_model_extra"] == "also kept"


# --- the original Heimdall's fallbacks for missing data --------------------------------------------

SEED_ONNX = localization_net_onnx()
COMPONENTS = [c.value for c in Component]


def rewritten(bundle: Bundle) -> dict[str, Any]:
    """The document our writer makes of ``bundle``."""
    out = io.BytesIO()
    write_bundle(bundle, SEED_ONNX, out)
    value = json.loads(out.getvalue())
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dialect", ["canonical", "legacy"])
def test_seed_fallbacks_read_as_absent_components(dialect: Dialect, compress: bool) -> None:
    data = sample_bundle(SEED_ONNX, dialect=dialect, fallbacks=True, compress=compress)
    doc = json.loads(gzip.decompress(data) if compress else data)
    assert {c: doc[c] for c in COMPONENTS} == SEED_FALLBACKS  # what the old exporter writes
    result = read_bundle(data)
    assert result.dialect == dialect
    assert result.compressed is compress
    # Nothing a consumer could use: each empty component is absent, as if it had not been written.
    assert result.bundle.components() == []
    assert all(getattr(result.bundle, c) is None for c in COMPONENTS)
    again = rewritten(result.bundle)
    assert not set(COMPONENTS) & set(again)
    assert again["integrity"]["onnx_sha256"] == hashlib.sha256(SEED_ONNX).hexdigest()
    assert read_bundle(json.dumps(again).encode()).bundle.components() == []


@pytest.mark.parametrize("dialect", ["canonical", "legacy"])
def test_partly_filled_components_keep_what_they_have(dialect: Dialect) -> None:
    data = sample_bundle(
        SEED_ONNX,
        dialect=dialect,
        fallbacks=True,
        training_config={"epochs": 12},
        performance_metrics={"train_loss": [0.5, 0.25], "best_epoch": 1},
        normalization_stats={"feature_means": [0.485, 0.456, 0.406]},
    )
    bundle = read_bundle(data).bundle
    assert bundle.components() == ["training_config", "performance_metrics", "normalization_stats"]
    assert bundle.training_config is not None
    assert bundle.training_config.epochs == 12 and bundle.training_config.optimizer is None
    metrics = bundle.performance_metrics
    assert metrics is not None
    assert metrics.train_loss == [0.5, 0.25] and metrics.val_loss == [] and metrics.best_val_loss is None
    stats = bundle.normalization_stats
    assert stats is not None
    assert stats.feature_means == [0.485, 0.456, 0.406] and stats.feature_stds is None
    assert stats.means_and_stds() is None  # means alone cannot normalise anything
    again = rewritten(bundle)
    # Nulls of a kept component are left out (absent and null mean the same); empty lists stay.
    assert again["training_config"] == {"epochs": 12}
    assert again["performance_metrics"]["train_loss"] == [0.5, 0.25]
    assert again["performance_metrics"]["val_loss"] == []
    assert "best_val_loss" not in again["performance_metrics"]
    assert again["normalization_stats"] == {"feature_means": [0.485, 0.456, 0.406]}
    assert "sample_predictions" not in again
    assert read_bundle(json.dumps(again).encode()).bundle.components() == bundle.components()


@pytest.mark.parametrize(
    ("stats", "kept"),
    [
        ({"feature_means": None, "feature_stds": None}, False),
        ({"feature_means": [], "feature_stds": []}, False),
        ({"feature_means": [], "feature_stds": [0.5]}, True),
        ({"x_note": "not computed"}, True),  # an unknown field is kept, and with it the component
    ],
)
def test_empty_normalisation_forms(stats: dict[str, Any], kept: bool) -> None:
    bundle = read_bundle(sample_bundle(SEED_ONNX, fallbacks=True, normalization_stats=stats)).bundle
    assert (bundle.normalization_stats is not None) is kept
    if bundle.normalization_stats is not None:
        assert bundle.normalization_stats.feature_means is None
        assert bundle.normalization_stats.means_and_stds() is None


def test_complete_normalisation_still_checked() -> None:
    meta = sample_bundle_metadata(normalization_stats={"feature_means": [0.1], "feature_stds": [0.2, 0.3]})
    with pytest.raises(InvalidBundle, match="feature_means has 1 values but feature_stds has 2"):
        parse_metadata(meta)
    meta = sample_bundle_metadata(fallbacks=True, normalization_stats={"feature_stds": [0.0]})
    with pytest.raises(InvalidBundle, match="greater than 0"):
        parse_metadata(meta)
    stats = parse_metadata(sample_bundle_metadata())[0].normalization_stats
    assert stats is not None and stats.means_and_stds() == (stats.feature_means, stats.feature_stds)


def test_selection_of_a_fallback_bundle_keeps_the_model_only() -> None:
    bundle = read_bundle(sample_bundle(SEED_ONNX, dialect="legacy", fallbacks=True)).bundle
    for keep in ([], COMPONENTS):
        chosen = ComponentSelection.only(keep).apply(bundle)
        assert chosen.components() == [] and not set(COMPONENTS) & set(rewritten(chosen))


# --- writer ---------------------------------------------------------------------------------------


def test_writer_fills_integrity_and_round_trips_byte_identical_onnx(tmp_path: Path) -> None:
    onnx = os.urandom(100_000)
    data = written(onnx=onnx)
    doc = json.loads(data)
    assert doc["format_version"] == "1.0.0"
    assert doc["integrity"] == {"onnx_sha256": hashlib.sha256(onnx).hexdigest(), "onnx_size_bytes": len(onnx)}
    assert base64.b64decode(doc["model"]["onnx_model_base64"], validate=True) == onnx
    sink = io.BytesIO()
    result = read_bundle(data, onnx_sink=sink)
    assert sink.getvalue() == onnx
    # Reading and writing again keeps the same model hash (and bytes).
    again = io.BytesIO()
    write_bundle(result.bundle, sink.getvalue(), again)
    assert read_bundle(again.getvalue()).onnx_sha256 == hashlib.sha256(onnx).hexdigest()


def test_writer_streams_from_a_file_and_writes_atomically(tmp_path: Path) -> None:
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(os.urandom(10_000))
    bundle, _ = parse_metadata(sample_bundle_metadata())
    out = tmp_path / "out" / "m.heimdall"
    result = write_bundle(bundle, onnx_path, out)
    assert out.stat().st_size == result.bytes_written
    assert [p.name for p in out.parent.iterdir()] == ["m.heimdall"]  # no temporary left behind
    assert read_bundle(out).onnx_sha256 == hashlib.sha256(onnx_path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("flag", "component"),
    [
        ("training_config", "training_config"),
        ("performance_metrics", "performance_metrics"),
        ("normalization_stats", "normalization_stats"),
        ("sample_predictions", "sample_predictions"),
    ],
)
def test_component_selection_drops_exactly_one_component(flag: str, component: str) -> None:
    data = written(selection=ComponentSelection(**{flag: False}))
    doc = json.loads(data)
    assert component not in doc
    others = {"training_config", "performance_metrics", "normalization_stats", "sample_predictions"}
    assert all(name in doc for name in others - {component})
    assert "onnx_model_base64" in doc["model"]


def test_component_selection_limits_samples_and_model_is_always_kept() -> None:
    meta = sample_bundle_metadata(num_samples=10)
    data = written(meta, selection=ComponentSelection(num_samples=2))
    assert len(json.loads(data)["sample_predictions"]) == 2
    only_model = written(meta, selection=ComponentSelection.only([]))
    doc = json.loads(only_model)
    assert set(doc) == {"format_version", "bundle_metadata", "model", "integrity"}
    with pytest.raises(ValueError, match="unknown component"):
        ComponentSelection.only(["model_weights"])
    with pytest.raises(ValueError):
        ComponentSelection(num_samples=11)


def test_gzip_bundles_are_read_transparently(tmp_path: Path) -> None:
    data = written(compress=True)
    assert data[:2] == b"\x1f\x8b"
    path = tmp_path / "named-without-gz.heimdall"  # detected by magic bytes, not by name
    path.write_bytes(data)
    result = read_bundle(path)
    assert result.compressed and result.onnx_sha256 == hashlib.sha256(ONNX).hexdigest()
    assert result.source_bytes == len(data) < result.document_bytes
    # Deterministic output: the same input gives the same compressed bytes.
    assert written(compress=True) == data


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, 64, 4099])
def test_every_chunk_boundary_decodes_the_same(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(scanner_module, "CHUNK_BYTES", chunk)
    for size in (1, 2, 3, 4, 5, 6, 7, 100, 1001):
        onnx = os.urandom(size)
        sink = io.BytesIO()
        result = read_bundle(encode(raw_document(sample_bundle_metadata(), onnx)), onnx_sink=sink)
        assert sink.getvalue() == onnx
        assert result.onnx_sha256 == hashlib.sha256(onnx).hexdigest()


# --- refusals ---------------------------------------------------------------------------------------


def valid_doc() -> dict[str, Any]:
    return raw_document(sample_bundle_metadata())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"   \n", "empty"),
        (b"not json at all", "not valid JSON"),
        (b"{\"format_version\": \"1.0.0\",", "truncated"),
        (b"\xff\xfe{}", "UTF-8"),
        (b"{\"a\": NaN}", "NaN"),
        (b"{\"a\": Infinity}", "Infinity"),
        (b"{\"a\": -Infinity}", "Infinity"),
        (b"{\"a\": 1e999}", "out of range"),
        (b"{\"a\": " + b"9" * 5000 + b"}", "digits"),
        (b"{\"a\": 1, \"a\": 2}", "duplicate key 'a'"),
        (b"[" * 100_000 + b"]" * 100_000, "deeper"),
        (b"{\"a\": \"unterminated", "Unterminated string"),
        (b"]", "not valid JSON"),
        (b"{\"a\": 1} trailing", "not valid JSON"),
        (b"{\"a\": 1,}", "not valid JSON"),
        (b"{\"a\" 1}", "not valid JSON"),
        (b"{\"model\": {\"x\": [" * 40 + b"]}" * 40, "not valid JSON"),
        (b"{\"a\": " + b"[" * 100 + b"]" * 100 + b"}", "deeper"),
    ],
)
def test_not_json_is_invalid_json(data: bytes, message: str) -> None:
    with pytest.raises(InvalidJson, match=message) as info:
        read_bundle(data)
    assert info.value.code == "INVALID_JSON"


@pytest.mark.parametrize("cut", [1, 10, 100, 500, -300, -50, -3, -2])
def test_truncated_bundles_are_refused(cut: int) -> None:
    data = written()
    with pytest.raises(BundleError):
        read_bundle(data[:cut])


def test_truncated_gzip_is_refused() -> None:
    data = written(compress=True)
    with pytest.raises(InvalidBundle, match="gzip"):
        read_bundle(data[: len(data) // 2])


def test_wrong_top_level_types() -> None:
    for doc in ([1, 2], "bundle", 3, None, True):
        with pytest.raises(InvalidBundle, match="top level") as info:
            read_bundle(encode(doc))
        assert info.value.code == "INVALID_BUNDLE"


def test_duplicate_model_field_is_refused() -> None:
    twice = b'"onnx_model_base64": "QUFB", "onnx_model_base64"'
    text = encode(valid_doc()).replace(b'"onnx_model_base64"', twice)
    with pytest.raises(InvalidJson, match="duplicate"):
        read_bundle(text)


def test_escaped_key_is_still_the_model_field() -> None:
    # "\u006fnnx_model_base64" is the same key: it must be streamed (and so counted), not left as metadata.
    data = encode(valid_doc()).replace(b'"onnx_model_base64"', b'"\\u006fnnx_model_base64"')
    assert read_bundle(data).onnx_sha256 == hashlib.sha256(ONNX).hexdigest()


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("model",), None, "model"),
        (("model", "model_name"), None, "model.model_name"),
        (("model", "onnx_opset"), "seventeen", "model.onnx_opset"),
        (("model", "input_shape"), "1x3", "model.input_shape"),
        (("model", "input_shape"), [1, -5], "model.input_shape"),
        (("bundle_metadata", "created_at"), "yesterday", "bundle_metadata.created_at"),
        (("bundle_metadata",), [], "bundle_metadata"),
        (("normalization_stats", "feature_stds"), [0.1, 0.0, 0.2], "normalization_stats"),
        (("normalization_stats", "feature_means"), [0.1], "normalization_stats"),
        (("integrity", "onnx_sha256"), "abc", "integrity.onnx_sha256"),
    ],
)
def test_missing_or_mistyped_fields_name_the_field(path: tuple[str, ...], value: Any, field: str) -> None:
    doc = valid_doc()
    doc["integrity"] = {"onnx_sha256": hashlib.sha256(ONNX).hexdigest(), "onnx_size_bytes": len(ONNX)}
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    with pytest.raises(InvalidBundle) as info:
        read_bundle(encode(doc))
    assert info.value.field is not None and info.value.field.startswith(field)
    assert field in info.value.message


def test_too_many_samples_are_refused() -> None:
    meta = sample_bundle_metadata(num_samples=10)
    meta["sample_predictions"] = meta["sample_predictions"] + meta["sample_predictions"][:1]
    with pytest.raises(InvalidBundle, match="sample_predictions"):
        read_bundle(encode(raw_document(meta)))
    limits = BundleLimits(max_samples=2)
    with pytest.raises(InvalidBundle, match="at most 2"):
        read_bundle(encode(raw_document(sample_bundle_metadata())), limits=limits)


@pytest.mark.parametrize(("version", "error"), [("2.0.0", UnsupportedVersion), ("0.9", UnsupportedVersion),
                                                 ("10", UnsupportedVersion), ("v1", InvalidBundle),
                                                 (1, InvalidBundle), (None, InvalidBundle)])
def test_format_version(version: Any, error: type[BundleError]) -> None:
    doc = valid_doc()
    if version is None:
        del doc["format_version"]
    else:
        doc["format_version"] = version
    with pytest.raises(error, match="format_version") as info:
        read_bundle(encode(doc))
    if error is UnsupportedVersion:
        assert str(version) in info.value.message
        assert info.value.code == "UNSUPPORTED_VERSION"


def test_accepted_minor_versions() -> None:
    for version in ("1", "1.0", "1.2.3"):
        doc = valid_doc()
        doc["format_version"] = version
        assert read_bundle(encode(doc)).bundle.format_version == version


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (base64.b64encode(ONNX).decode()[:-1], "multiple of 4"),
        (base64.urlsafe_b64encode(b"\xfb\xff" * 300).decode(), "strict standard base64"),
        (base64.encodebytes(ONNX).decode(), "strict standard base64"),  # line breaks
        ("QUFB QUFB", "strict standard base64"),
        ("QQ==QUFB", "padding|strict"),
        ("QUFB" * 2000 + "QQ==" + "QUFB", "padding|strict"),
        ("QUFB\\/QUFB", "escape"),
        ("QUFB\\u0041QUF", "escape"),
        ("Q\u00e9FB", "escape|strict"),
        ("", "empty"),
    ],
)
def test_non_strict_base64_is_refused(encoded: str, message: str) -> None:
    doc = valid_doc()
    data = encode(doc).replace(doc["model"]["onnx_model_base64"].encode(), encoded.encode("utf-8"))
    with pytest.raises(BundleError, match=message) as info:
        read_bundle(data)
    assert info.value.code in ("INVALID_BASE64", "INVALID_BUNDLE")


def test_model_field_of_the_wrong_type() -> None:
    doc = valid_doc()
    doc["model"]["onnx_model_base64"] = 42
    with pytest.raises(InvalidBundle, match="must be a base64 string"):
        read_bundle(encode(doc))
    del doc["model"]["onnx_model_base64"]
    with pytest.raises(InvalidBundle, match="missing"):
        read_bundle(encode(doc))


def test_onnx_over_the_limit_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[int] = []
    real = pybase64.b64decode

    def counting(data: Any, **kwargs: Any) -> bytes:
        decoded.append(len(data))
        return real(data, **kwargs)

    # The scanner calls pybase64.b64decode through the module: patching the module patches its calls.
    monkeypatch.setattr(pybase64, "b64decode", counting)
    monkeypatch.setattr(scanner_module, "CHUNK_BYTES", 1024)
    limits = BundleLimits(max_onnx_bytes=4096)
    with pytest.raises(TooLarge, match="larger than the limit"):
        read_bundle(encode(raw_document(sample_bundle_metadata(), os.urandom(50_000))), limits=limits)
    assert sum(decoded) * 3 // 4 <= 4096
    assert read_bundle(encode(raw_document(sample_bundle_metadata(), os.urandom(4096))), limits=limits)


def test_bundle_over_the_limit_is_refused_without_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.heimdall"
    with path.open("wb") as f:
        f.truncate(3 * 1024**3)  # sparse: 3 GiB of nothing, never read
    with pytest.raises(TooLarge, match="over the limit"):
        read_bundle(path)
    limits = BundleLimits(max_bundle_bytes=1000)
    with pytest.raises(TooLarge):
        read_bundle(written(), limits=limits)  # a stream: refused as soon as it passes the cap


def test_gzip_bomb_is_refused_while_decompressing() -> None:
    bomb = gzip.compress(b'{"a": "' + b"A" * (64 * 1024 * 1024) + b'"}', compresslevel=9)
    assert len(bomb) < 200_000
    limits = BundleLimits(max_bundle_bytes=8 * 1024 * 1024, max_metadata_bytes=32 * 1024 * 1024)
    with pytest.raises(TooLarge, match="decompressed bundle"):
        read_bundle(bomb, limits=limits)


def test_metadata_over_the_limit_is_refused() -> None:
    meta = sample_bundle_metadata()
    meta["bundle_metadata"]["description"] = "x" * 5000
    with pytest.raises(TooLarge, match="metadata"):
        read_bundle(encode(raw_document(meta)), limits=BundleLimits(max_metadata_bytes=4096))


def test_declared_checksum_and_size_must_match() -> None:
    data = written()
    doc = json.loads(data)
    doc["integrity"]["onnx_sha256"] = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(ChecksumMismatch, match="hashes to") as info:
        read_bundle(encode(doc))
    assert info.value.code == "CHECKSUM_MISMATCH"
    doc = json.loads(data)
    doc["integrity"]["onnx_size_bytes"] += 1
    with pytest.raises(ChecksumMismatch, match="onnx_size_bytes"):
        read_bundle(encode(doc))
    doc = json.loads(data)
    # Swap the model but keep the declared integrity: the classic tampering case.
    doc["model"]["onnx_model_base64"] = base64.b64encode(ONNX[::-1]).decode()
    with pytest.raises(ChecksumMismatch):
        read_bundle(encode(doc))


def test_unreadable_path_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidBundle, match="cannot read"):
        read_bundle(tmp_path / "missing.heimdall")


@pytest.mark.parametrize(
    "junk",
    [
        [0] * 200_000,  # millions of tiny tokens are skipped by the C scanner, not walked in Python
        [{}] * 100_000,
        [[0]] * 100_000,
        {f"k{i}": i for i in range(50_000)},
    ],
)
def test_bulky_unknown_fields_are_read_and_kept(junk: Any) -> None:
    meta = sample_bundle_metadata()
    meta["x_bulk"] = junk
    meta["model"]["x_bulk"] = junk
    result = read_bundle(encode(raw_document(meta)))
    extra = result.bundle.model_extra
    assert extra is not None and extra["x_bulk"] == junk
    assert result.bundle.model.model_extra == {"x_bulk": junk}


def test_too_many_top_level_fields_are_refused() -> None:
    meta = sample_bundle_metadata()
    meta.update({f"x_{i}": i for i in range(10_001)})
    with pytest.raises(InvalidBundle, match="more than 10000 fields"):
        read_bundle(encode(raw_document(meta)))


def test_numbers_inside_strings_are_not_numbers() -> None:
    meta = sample_bundle_metadata()
    meta["bundle_metadata"]["description"] = "9" * 100 + " 1e999 [[[[[[[[[["
    result = read_bundle(encode(raw_document(meta)))
    assert result.bundle.bundle_metadata.description == meta["bundle_metadata"]["description"]


def test_another_major_version_is_named_before_anything_else() -> None:
    # A v2 bundle may not embed its model at all: the version, not the missing field, is the problem.
    with pytest.raises(UnsupportedVersion, match=r"2\.0\.0"):
        read_bundle(b'{"format_version": "2.0.0", "model": {"weights_uri": "s3://x"}}')
