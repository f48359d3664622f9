"""The inference core (issue 6): session cache, input checking, normalisation, runs.

Real models from :mod:`heimdall.testing.sample_models` and a real ONNX Runtime; only the download is a fake
(``fetch`` writes bytes we hold). Loading runs the structural pass in a child process (about half a
second per model).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from heimdall.bundle.models import NormalizationStats
from heimdall.errors import ChecksumMismatch, InvalidOnnx, ShapeMismatch, TooLarge
from heimdall.inference import inputs as inference_inputs
from heimdall.inference.inputs import InvalidInput, normalize, prepare_inputs
from heimdall.inference.sessions import LoadedModel, ModelCache, run
from heimdall.settings import BundleLimits
from heimdall.testing.sample_models import localization_net_onnx, padded_onnx

LIMITS = BundleLimits()
LOCALIZATION = localization_net_onnx()
PADDED = padded_onnx(64 * 1024)
STATS = NormalizationStats(feature_means=[0.485, 0.456, 0.406], feature_stds=[0.229, 0.224, 0.225])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class FakeFetch:
    """Writes ``data`` where asked and counts the calls (the S3 download, in the function)."""

    data: bytes
    calls: list[Path] = field(default_factory=list)

    def __call__(self, path: Path) -> None:
        self.calls.append(path)
        path.write_bytes(self.data)


@dataclass(frozen=True)
class Spec:
    """A declared input, as ``onnxruntime.NodeArg`` describes one."""

    name: str
    type: str
    shape: Sequence[int | str | None]


@pytest.fixture
def session_spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts every ``onnxruntime.InferenceSession`` created from here on."""
    created: list[str] = []
    real = ort.InferenceSession

    def spy(path: str, *args: Any, **kwargs: Any) -> Any:
        created.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return created


def load(
    cache: ModelCache, data: bytes, tmp_path: Path, *, model_id: str = "m1"
) -> tuple[LoadedModel, FakeFetch]:
    fetch = FakeFetch(data)
    return cache.load(model_id, sha(data), fetch, workdir=tmp_path, limits=LIMITS), fetch


def bare_session(data: bytes) -> Any:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def as_lists(array: np.ndarray) -> list[Any]:
    values: list[Any] = array.tolist()
    return values


# --- the session cache ---------------------------------------------------------------------------


def test_session_created_once_and_reused(tmp_path: Path, session_spy: list[str]) -> None:
    cache = ModelCache()
    first, fetch = load(cache, LOCALIZATION, tmp_path)
    second = cache.load("m1", sha(LOCALIZATION), fetch, workdir=tmp_path, limits=LIMITS)

    assert second.session is first.session
    assert len(fetch.calls) == 1
    assert len(session_spy) == 1
    assert (tmp_path / f"{sha(LOCALIZATION)}.onnx").read_bytes() == LOCALIZATION
    assert [t.name for t in first.structure.inputs] == ["input"]
    assert not list(tmp_path.glob("*.part"))


def test_model_already_on_disk_is_not_fetched(tmp_path: Path) -> None:
    (tmp_path / f"{sha(PADDED)}.onnx").write_bytes(PADDED)
    loaded, fetch = load(ModelCache(), PADDED, tmp_path)
    assert fetch.calls == []
    assert [o.name for o in loaded.session.get_outputs()] == ["output"]


def test_concurrent_loads_share_one_session(tmp_path: Path, session_spy: list[str]) -> None:
    cache = ModelCache()
    fetch = FakeFetch(LOCALIZATION)

    def worker(_: int) -> LoadedModel:
        return cache.load("m1", sha(LOCALIZATION), fetch, workdir=tmp_path, limits=LIMITS)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(worker, range(4)))
    assert all(r.session is results[0].session for r in results)
    assert len(fetch.calls) == 1
    assert len(session_spy) == 1


def test_least_recently_used_session_is_evicted(tmp_path: Path) -> None:
    cache = ModelCache(max_entries=1)
    first, _ = load(cache, LOCALIZATION, tmp_path, model_id="a")
    load(cache, PADDED, tmp_path, model_id="b")
    assert len(cache) == 1
    assert cache.get("a", sha(LOCALIZATION)) is None
    again, fetch = load(cache, LOCALIZATION, tmp_path, model_id="a")
    assert again.session is not first.session
    assert fetch.calls == []  # the file stayed in workdir


def test_checksum_mismatch_refused_before_any_session(tmp_path: Path, session_spy: list[str]) -> None:
    cache = ModelCache()
    fetch = FakeFetch(LOCALIZATION)
    with pytest.raises(ChecksumMismatch) as caught:
        cache.load("m1", sha(PADDED), fetch, workdir=tmp_path, limits=LIMITS)
    assert sha(LOCALIZATION) in caught.value.message
    assert len(fetch.calls) == 1
    assert session_spy == []
    assert list(tmp_path.iterdir()) == []  # the bad file is removed
    assert len(cache) == 0


def test_model_over_the_size_cap_refused_before_any_session(tmp_path: Path, session_spy: list[str]) -> None:
    fetch = FakeFetch(PADDED)
    with pytest.raises(TooLarge):
        ModelCache().load(
            "m1", sha(PADDED), fetch, workdir=tmp_path, limits=BundleLimits(max_onnx_bytes=4096)
        )
    assert session_spy == []
    assert list(tmp_path.iterdir()) == []


def test_malformed_sha_refused_without_fetching(tmp_path: Path) -> None:
    fetch = FakeFetch(LOCALIZATION)
    with pytest.raises(ChecksumMismatch):
        ModelCache().load("m1", "../" + "a" * 61, fetch, workdir=tmp_path, limits=LIMITS)
    assert fetch.calls == []


def test_structurally_invalid_model_refused_before_any_session(
    tmp_path: Path, session_spy: list[str]
) -> None:
    not_onnx = b"this is not an ONNX model, only bytes" * 10
    cache = ModelCache()
    with pytest.raises(InvalidOnnx):
        load(cache, not_onnx, tmp_path)
    assert session_spy == []
    assert len(cache) == 0


def test_failed_fetch_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(path: Path) -> None:
        path.write_bytes(LOCALIZATION[:100])
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        ModelCache().load("m1", sha(LOCALIZATION), broken, workdir=tmp_path, limits=LIMITS)
    assert list(tmp_path.iterdir()) == []


# --- input checking ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def localization() -> Any:
    return bare_session(LOCALIZATION)


def image(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 128, 32)).astype(np.float32)


def refusal(inputs: Sequence[Any], payload: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        prepare_inputs(inputs, payload)
    assert caught.value.code == "INVALID_INPUT"
    assert caught.value.http_status == 400
    return caught.value


def test_named_and_single_input_payloads_give_the_same_array(localization: Any) -> None:
    x = image(2)
    by_name = prepare_inputs(localization.get_inputs(), {"input": as_lists(x)})
    assert list(by_name) == ["input"]
    assert by_name["input"].dtype == np.float32
    assert np.array_equal(by_name["input"], x)

    padded = bare_session(PADDED)
    rows = padded.get_inputs()[0].shape[1]
    renamed = [Spec("features", "tensor(float)", ["batch", rows])]
    single = prepare_inputs(renamed, {"input": [[1] * rows]})  # ints are fine for a float input
    assert list(single) == ["features"]
    assert single["features"].dtype == np.float32


@pytest.mark.parametrize(
    ("shape", "got"),
    [
        ((1, 2, 128, 32), "got float [1, 2, 128, 32]"),
        ((1, 3, 128), "got float [1, 3, 128]"),
        ((1, 1, 3, 128, 32), "got float [1, 1, 3, 128, 32]"),
        ((2, 3, 128, 31), "got float [2, 3, 128, 31]"),
    ],
)
def test_wrong_shape_names_the_expected_shape(localization: Any, shape: tuple[int, ...], got: str) -> None:
    error = refusal(localization.get_inputs(), {"input": np.zeros(shape, dtype=np.float32).tolist()})
    assert "input 'input' expects float32 [batch, 3, 128, 32]" in error.message
    assert got in error.message
    assert error.details["expected_shape"] == ["batch", 3, 128, 32]
    assert error.details["received_shape"] == list(shape)
    assert error.field == "inputs.input"


def test_empty_batch_is_refused() -> None:
    # A named dimension takes any *positive* size.
    assert "got float [0]" in refusal([Spec("x", "tensor(float)", ["batch"])], {"x": []}).message
    assert "got float [0]" in refusal([Spec("x", "tensor(float)", ["batch", 2])], {"x": []}).message


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ([[1.0, 2.0], [3.0]], "ragged"),
        ([["a", "b"]], "string"),
        ([[None, 1.0]], "non-numeric"),
        ([[{"x": 1}, 1.0]], "non-numeric"),
        ([[True, False]], "not booleans"),
        ([[float("nan"), 1.0]], "NaN"),
        ([[float("inf"), 1.0]], "NaN or infinite"),
        ([[1e300, 1.0]], "outside the range of float32"),
    ],
)
def test_values_a_float_input_cannot_take(value: Any, reason: str) -> None:
    spec = [Spec("x", "tensor(float)", ["batch", 2])]
    error = refusal(spec, {"x": value})
    assert "expects float32 [batch, 2]" in error.message
    assert reason in error.message


def test_integer_and_bool_inputs() -> None:
    ints = [Spec("ids", "tensor(int64)", ["batch", "seq"])]
    assert prepare_inputs(ints, {"ids": [[1, 2, 3]]})["ids"].dtype == np.int64
    assert "integers expected" in refusal(ints, {"ids": [[1.0, 2.5]]}).message
    small = [Spec("b", "tensor(uint8)", [2])]
    assert "outside the range of uint8" in refusal(small, {"b": [1, 256]}).message
    assert "outside the range of uint8" in refusal(small, {"b": [-1, 2]}).message
    flags = [Spec("mask", "tensor(bool)", [None])]
    assert prepare_inputs(flags, {"mask": [True, False]})["mask"].dtype == np.bool_
    assert "booleans expected" in refusal(flags, {"mask": [1, 0]}).message
    strings = [Spec("s", "tensor(string)", [1])]
    assert "cannot feed tensor(string)" in refusal(strings, {"s": ["a"]}).message


def test_unknown_missing_and_too_many_elements(localization: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x = as_lists(image(1))
    assert "unknown input 'image'" in refusal(localization.get_inputs(), {"input": x, "image": x}).message
    two = [Spec("a", "tensor(float)", [1]), Spec("b", "tensor(float)", [1])]
    error = refusal(two, {"a": [1.0]})
    assert "missing input 'b'" in error.message
    assert "'a', 'b'" in error.message
    # With two inputs, ``input`` is not a shorthand.
    assert "unknown input 'input'" in refusal(two, {"input": [1.0]}).message

    monkeypatch.setattr(inference_inputs, "MAX_INPUT_ELEMENTS", 3 * 128 * 32)
    prepare_inputs(localization.get_inputs(), {"input": x})
    too_many = refusal(localization.get_inputs(), {"input": as_lists(image(2))})
    assert "more than 12288 elements" in too_many.message


# --- runs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("model", ["localization", "padded"])
def test_outputs_equal_a_bare_session_run(tmp_path: Path, model: str, batch: int) -> None:
    data = LOCALIZATION if model == "localization" else PADDED
    loaded, _ = load(ModelCache(), data, tmp_path)
    bare = bare_session(data)
    declared = bare.get_inputs()[0]
    x = np.random.default_rng(batch).standard_normal((batch, *declared.shape[1:])).astype(np.float32)

    result = run(loaded.session, prepare_inputs(loaded.session.get_inputs(), {"input": as_lists(x)}))

    expected = bare.run(None, {declared.name: x})
    names = [o.name for o in bare.get_outputs()]
    assert list(result.outputs) == names
    for name, want in zip(names, expected, strict=True):
        got = np.asarray(result.outputs[name], dtype=np.float32)
        assert got.shape == want.shape
        assert np.array_equal(got, want)
    assert result.latency_ms > 0


def test_normalisation_on_and_off(tmp_path: Path) -> None:
    loaded, _ = load(ModelCache(), LOCALIZATION, tmp_path)
    bare = bare_session(LOCALIZATION)
    x = np.random.default_rng(7).uniform(0.0, 1.0, (2, 3, 128, 32)).astype(np.float32)
    arrays = prepare_inputs(loaded.session.get_inputs(), {"input": as_lists(x)})

    by_hand = np.empty_like(x)
    assert STATS.feature_means is not None and STATS.feature_stds is not None
    for channel, (mean, std) in enumerate(zip(STATS.feature_means, STATS.feature_stds, strict=True)):
        by_hand[:, channel] = (x[:, channel] - np.float32(mean)) / np.float32(std)
    normalized = normalize(arrays, STATS)
    assert normalized["input"].dtype == np.float32
    assert np.array_equal(normalized["input"], by_hand)
    assert np.array_equal(arrays["input"], x)  # the input itself is left alone

    on = run(loaded.session, normalized).outputs
    off = run(loaded.session, arrays).outputs
    want_on = bare.run(None, {"input": by_hand})
    want_off = bare.run(None, {"input": x})
    for index, name in enumerate(["positions", "uncertainties"]):
        assert np.array_equal(np.asarray(on[name], dtype=np.float32), want_on[index])
        assert np.array_equal(np.asarray(off[name], dtype=np.float32), want_off[index])
    assert on["positions"] != off["positions"]


def test_normalisation_that_does_not_fit_the_input() -> None:
    arrays: dict[str, np.ndarray] = {
        "input": np.ones((1, 5), dtype=np.float32),
        "ids": np.ones((1, 3), dtype=np.int64),
    }
    with pytest.raises(ShapeMismatch, match="3 features but input 'input' has shape \\[1, 5\\]"):
        normalize(arrays, STATS)
    single = NormalizationStats(feature_means=[0.5], feature_stds=[2.0])
    out = normalize(arrays, single)
    assert np.array_equal(out["input"], np.full((1, 5), 0.25, dtype=np.float32))
    assert out["ids"] is arrays["ids"]  # integer inputs are not normalised


def test_partial_normalisation_is_refused_not_half_applied() -> None:
    arrays = {"input": np.ones((1, 3), dtype=np.float32)}
    for partial in (
        NormalizationStats(feature_means=[0.5, 0.5, 0.5]),
        NormalizationStats(feature_stds=[2.0, 2.0, 2.0]),
    ):
        with pytest.raises(ShapeMismatch, match="partial"):
            normalize(arrays, partial)


def test_run_names_outputs_and_times_only_the_run() -> None:
    @dataclass(frozen=True)
    class Out:
        name: str
        type: str = "tensor(float)"
        shape: Sequence[int | str | None] = (1,)

    class Slow:
        def __init__(self, clock: Callable[[], None]) -> None:
            self.clock = clock

        def get_inputs(self) -> list[Out]:
            return [Out("x")]

        def get_outputs(self) -> list[Out]:
            return [Out("b"), Out("a")]

        def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any]) -> Sequence[Any]:
            self.clock()
            return [np.array([1.0]), np.array([[2, 3]])]

    import time

    result = run(Slow(lambda: time.sleep(0.02)), {"x": np.zeros(1, dtype=np.float32)})
    assert result.outputs == {"b": [1.0], "a": [[2, 3]]}
    assert 20 <= result.latency_ms < 1000


# --- binary tensors ------------------------------------------------------------------------------------


def binary(array: np.ndarray, **overrides: Any) -> dict[str, Any]:
    """``array`` as the endpoint's binary tensor form (little-endian raw values, base64)."""
    little = array.astype(array.dtype.newbyteorder("<"), copy=False)
    tensor = {
        "dtype": str(array.dtype),
        "shape": list(array.shape),
        "data_b64": base64.b64encode(little.tobytes()).decode(),
    }
    return {**tensor, **overrides}


def test_a_binary_tensor_gives_exactly_the_array_sent(localization: Any) -> None:
    x = image(3)
    got = prepare_inputs(localization.get_inputs(), {"input": binary(x)})["input"]
    assert got.dtype == np.float32 and got.shape == x.shape and np.array_equal(got, x)
    # Bit for bit: a value JSON would round (when printed short) arrives unchanged.
    ints = [Spec("ids", "tensor(int64)", ["batch", 3])]
    big = np.array([[2**62 + 1, -(2**40), 7]], dtype=np.int64)
    assert np.array_equal(prepare_inputs(ints, {"ids": binary(big)})["ids"], big)
    flags = [Spec("mask", "tensor(bool)", [2])]
    assert prepare_inputs(flags, {"mask": binary(np.array([True, False]))})["mask"].tolist() == [True, False]


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"dtype": "float64"}, "dtype 'float64' (no conversion: send float32)"),
        ({"shape": [1, 3, 128]}, "shape [1, 3, 128]"),
        ({"shape": [1, 3, 128, 31]}, "shape [1, 3, 128, 31]"),
        ({"shape": [1, 3, 128, "32"]}, "shape [1, 3, 128, '32']"),
        ({"shape": [1, 3, 128, True]}, "shape"),
        ({"shape": "1,3,128,32"}, "shape '1,3,128,32'"),
        ({"data_b64": "AAAA"}, "must be the base64 of 49152 bytes"),
        ({"data_b64": 12}, "must be the base64 of"),
        ({"extra": 1}, "exactly the keys"),
    ],
)
def test_binary_tensors_that_do_not_fit_are_refused(
    localization: Any, overrides: dict[str, Any], reason: str
) -> None:
    error = refusal(localization.get_inputs(), {"input": binary(image(1), **overrides)})
    assert reason in error.message, error.message
    assert error.details["expected_shape"] == ["batch", 3, 128, 32]


def test_binary_tensor_data_is_checked_like_lists() -> None:
    spec = [Spec("x", "tensor(float)", ["batch", 2])]
    assert (
        "NaN or infinite" in refusal(spec, {"x": binary(np.array([[np.nan, 1.0]], dtype=np.float32))}).message
    )
    bad = binary(np.zeros((1, 2), dtype=np.float32))
    bad["data_b64"] = "!" * len(bad["data_b64"])
    assert "not valid base64" in refusal(spec, {"x": bad}).message
    flags = [Spec("mask", "tensor(bool)", [2])]
    two = {"dtype": "bool", "shape": [2], "data_b64": base64.b64encode(b"\x01\x02").decode()}
    assert "bytes 0 and 1 only" in refusal(flags, {"mask": two}).message
    huge = {"dtype": "float32", "shape": [1 << 23, 2], "data_b64": ""}
    assert "more than" in refusal(spec, {"x": huge}).message
