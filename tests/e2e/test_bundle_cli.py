"""The ``heimdall bundle`` commands as a user drives them: a subprocess per command, real bundles.

Bundles are built in-process with the library (:mod:`heimdall.testing.sample_bundles` +
``write_bundle``); every command runs as ``python -m heimdall.cli ...`` and is judged on its exit code,
stdout and stderr. No output of any command may contain a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from heimdall.bundle import ComponentSelection, parse_metadata, read_bundle, write_bundle
from heimdall.bundle.dialects import Dialect
from heimdall.bundle.signing import generate_key_pair, load_private_key
from heimdall.testing.sample_bundles import (
    SEED_FALLBACKS,
    legacy_bundle_metadata,
    reference_bundle,
    sample_bundle,
    sample_bundle_metadata,
)
from heimdall.testing.sample_models import (
    ReferenceModel,
    localization_net_onnx,
    onnx_backend_model,
    padded_onnx,
    unconvertible_onnx,
)

ERROR_LINE = "error {code}: "


def heimdall(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter; fail the test if anything printed a traceback."""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("HEIMDALL_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "heimdall.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stdout + result.stderr
    return result


def json_out(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object a ``--json`` command printed on stdout."""
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    return value


def assert_error(result: subprocess.CompletedProcess[str], code: str) -> None:
    """Exit 1 with ``error CODE: ...`` on stderr."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert ERROR_LINE.format(code=code) in result.stderr, result.stderr


@dataclass(frozen=True)
class Corpus:
    """Real bundles and keys, built once for the module (tests write only under their tmp_path)."""

    root: Path
    onnx: bytes
    sha256: str
    model: Path
    metadata: Path
    canonical: Path
    signed: Path
    legacy: Path
    retrained: Path
    other_graph: Path
    alice_key: Path
    alice_pub: Path
    alice_id: str
    bob_pub: Path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("corpus")
    onnx = localization_net_onnx()
    model = root / "model.onnx"
    model.write_bytes(onnx)
    doc = sample_bundle_metadata(onnx, num_samples=5)
    metadata = root / "META.json"
    metadata.write_text(json.dumps(doc), encoding="utf-8")
    bundle, _ = parse_metadata(doc)

    canonical = root / "canonical.heimdall"
    write_bundle(bundle, onnx, canonical)
    alice_key, alice_pub = root / "alice.key", root / "alice.pub"
    alice_id = generate_key_pair(alice_key, alice_pub)
    generate_key_pair(root / "bob.key", root / "bob.pub")
    signed = root / "signed.heimdall"
    write_bundle(bundle, onnx, signed, signing_key=load_private_key(alice_key))

    # The legacy dialect as the older service wrote it: one json.dumps, no integrity block.
    legacy_doc = legacy_bundle_metadata(onnx)
    legacy_doc["model"]["onnx_model_base64"] = base64.b64encode(onnx).decode("ascii")
    legacy = root / "legacy.heimdall"
    legacy.write_text(json.dumps(legacy_doc), encoding="utf-8")

    retrained = root / "retrained.heimdall"  # same graph, other weights
    write_bundle(bundle, localization_net_onnx(seed=1), retrained)
    other_graph = root / "other-graph.heimdall"  # other inputs and outputs
    write_bundle(bundle, padded_onnx(8192), other_graph)
    return Corpus(
        root=root,
        onnx=onnx,
        sha256=hashlib.sha256(onnx).hexdigest(),
        model=model,
        metadata=metadata,
        canonical=canonical,
        signed=signed,
        legacy=legacy,
        retrained=retrained,
        other_graph=other_graph,
        alice_key=alice_key,
        alice_pub=alice_pub,
        alice_id=alice_id,
        bob_pub=root / "bob.pub",
    )


# --- top level -------------------------------------------------------------------------------------


def test_version_and_help() -> None:
    version = heimdall("--version")
    assert version.returncode == 0
    assert version.stdout.startswith("heimdall ")
    listing = heimdall("bundle", "--help")
    assert listing.returncode == 0
    commands = (
        "inspect",
        "verify",
        "extract-onnx",
        "pack",
        "migrate",
        "upgrade",
        "sign",
        "keygen",
        "diff",
        "demo",
    )
    for command in commands:
        assert command in listing.stdout


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["bundle", "inspect"], id="missing-argument"),
        pytest.param(["bundle", "inspect", "{canonical}", "--no-such-option"], id="unknown-option"),
        pytest.param(["bundle", "inspect", "{missing}"], id="file-does-not-exist"),
        pytest.param(["bundle", "verify", "{canonical}", "--max-onnx-mb", "0"], id="max-onnx-mb-zero"),
        pytest.param(
            ["bundle", "pack", "--onnx", "{model}", "--metadata", "{metadata}", "-o", "{out}", "-n", "11"],
            id="too-many-samples",
        ),
        pytest.param(
            [
                "bundle",
                "pack",
                "--onnx",
                "{model}",
                "--metadata",
                "{metadata}",
                "-o",
                "{out}",
                "--key-id",
                "x",
            ],
            id="key-id-without-key",
        ),
    ],
)
def test_usage_errors_exit_2(corpus: Corpus, tmp_path: Path, args: list[str]) -> None:
    paths = {
        "canonical": corpus.canonical,
        "missing": tmp_path / "missing.heimdall",
        "model": corpus.model,
        "metadata": corpus.metadata,
        "out": tmp_path / "out.heimdall",
    }
    result = heimdall(*(arg.format(**paths) for arg in args))
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert not (tmp_path / "out.heimdall").exists()


# --- inspect ---------------------------------------------------------------------------------------


def test_inspect_text_and_json(corpus: Corpus) -> None:
    text = heimdall("bundle", "inspect", corpus.signed)
    assert text.returncode == 0, text.stderr
    for expected in (
        "canonical dialect",
        "localization-net-v1 1.0.0",
        corpus.sha256,
        f"signed by {corpus.alice_id} (not verified)",
        "sample_predictions (5)",
        "[1, 3, 128, 32]",
    ):
        assert expected in text.stdout

    summary = json_out(heimdall("bundle", "inspect", corpus.signed, "--json"))
    assert summary["format_version"] == "1.0.0"
    assert summary["dialect"] == "canonical"
    assert summary["model"]["model_name"] == "localization-net-v1"
    assert summary["model"]["onnx_opset"] == 17
    assert summary["model"]["output_shape"] == [[1, 2], [1, 2]]
    assert summary["components"] == [
        "training_config",
        "performance_metrics",
        "normalization_stats",
        "sample_predictions",
    ]
    assert summary["sample_count"] == 5
    assert summary["onnx_sha256"] == corpus.sha256
    assert summary["onnx_size_bytes"] == len(corpus.onnx)
    assert summary["integrity_declared"] is True
    assert summary["compressed"] is False
    assert summary["bundle_bytes"] == corpus.signed.stat().st_size
    assert summary["signature"] == "unverified"
    assert summary["signature_key_id"] == corpus.alice_id


def test_inspect_legacy_bundle(corpus: Corpus) -> None:
    summary = json_out(heimdall("bundle", "inspect", corpus.legacy, "--json"))
    assert summary["dialect"] == "legacy"
    assert summary["integrity_declared"] is False
    assert summary["model"]["version"] == "1"
    assert summary["signature"] == "unsigned"
    assert summary["onnx_sha256"] == corpus.sha256


# --- verify ----------------------------------------------------------------------------------------


def test_verify_valid(corpus: Corpus) -> None:
    text = heimdall("bundle", "verify", corpus.canonical)
    assert text.returncode == 0, text.stderr
    assert "valid" in text.stdout
    assert corpus.sha256 in text.stdout
    assert "input: float32[batch, 3, 128, 32]" in text.stdout
    assert "unsigned" in text.stdout
    assert text.stderr == ""


def test_verify_with_trusted_keys(corpus: Corpus) -> None:
    right = heimdall(
        "bundle", "verify", corpus.signed, "--trusted-key", corpus.alice_pub, "--require-signature"
    )
    assert right.returncode == 0, right.stderr
    assert f"signed by {corpus.alice_id} (verified)" in right.stdout

    wrong = heimdall("bundle", "verify", corpus.signed, "--trusted-key", corpus.bob_pub, "--json")
    assert_error(wrong, "BAD_SIGNATURE")
    report = json_out(wrong)
    assert report["valid"] is False
    assert report["code"] == "BAD_SIGNATURE"
    assert corpus.alice_id in report["message"]
    assert report["onnx_sha256"] == corpus.sha256  # the integrity pass got that far


def test_verify_require_signature_refuses_unsigned(corpus: Corpus) -> None:
    result = heimdall(
        "bundle", "verify", corpus.canonical, "--require-signature", "--trusted-key", corpus.alice_pub
    )
    assert_error(result, "BAD_SIGNATURE")
    assert "not signed" in result.stderr


def test_verify_max_onnx_mb_too_small(corpus: Corpus) -> None:
    # The model is about 22 KB; 0.01 MiB is about 10 KB.
    result = heimdall("bundle", "verify", corpus.canonical, "--max-onnx-mb", "0.01", "--json")
    assert_error(result, "TOO_LARGE")
    report = json_out(result)
    assert report["valid"] is False
    assert report["code"] == "TOO_LARGE"
    assert report["onnx_sha256"] is None


def test_verify_refuses_tampered_metadata(corpus: Corpus, tmp_path: Path) -> None:
    doc = json.loads(corpus.signed.read_text(encoding="utf-8"))
    doc["model"]["architecture"] = "something_else"
    tampered = tmp_path / "tampered.heimdall"
    tampered.write_text(json.dumps(doc), encoding="utf-8")
    result = heimdall("bundle", "verify", tampered, "--trusted-key", corpus.alice_pub)
    assert_error(result, "BAD_SIGNATURE")
    assert result.stdout == ""


# --- bad input files -------------------------------------------------------------------------------


def _bad_input(corpus: Corpus, name: str) -> tuple[bytes, set[str]]:
    whole = corpus.canonical.read_bytes()
    cases = {
        "not-json": (b"this is not a bundle\n", {"INVALID_JSON"}),
        "empty": (b"", {"INVALID_JSON"}),
        "truncated": (whole[: len(whole) // 2], {"INVALID_JSON"}),
        "random-bytes": (random.Random(7).randbytes(4096), {"INVALID_JSON", "INVALID_BUNDLE"}),
        "corrupt-gzip": (b"\x1f\x8b\x08\x00" + random.Random(8).randbytes(512), {"INVALID_BUNDLE"}),
        "json-array": (b"[1, 2, 3]", {"INVALID_BUNDLE"}),
    }
    return cases[name]


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("not-json", ["inspect"]),
        ("empty", ["verify", "--json"]),
        ("truncated", ["verify", "--json"]),
        ("random-bytes", ["inspect", "--json"]),
        ("corrupt-gzip", ["extract-onnx", "-o", "{out}"]),
        ("json-array", ["migrate", "-o", "{out}"]),
    ],
)
def test_bad_input_files_are_refused(corpus: Corpus, tmp_path: Path, name: str, command: list[str]) -> None:
    data, codes = _bad_input(corpus, name)
    bad = tmp_path / f"{name}.heimdall"
    bad.write_bytes(data)
    out = tmp_path / "out"
    result = heimdall("bundle", command[0], bad, *(arg.format(out=out) for arg in command[1:]))
    assert result.returncode == 1, (result.stdout, result.stderr)
    first_line = result.stderr.splitlines()[0]
    assert first_line.startswith("error ")
    code = first_line.removeprefix("error ").split(":", 1)[0]
    assert code in codes, result.stderr
    assert not out.exists()
    if "--json" in command and command[0] == "verify":
        report = json_out(result)
        assert report["valid"] is False
        assert report["code"] == code
        assert report["message"]
    else:
        assert result.stdout == ""


def test_extract_leaves_nothing_behind_on_failure(corpus: Corpus, tmp_path: Path) -> None:
    data = bytearray(corpus.canonical.read_bytes())
    at = data.index(b'"onnx_model_base64": "') + 500
    data[at : at + 1] = b"!"
    bad = tmp_path / "corrupt.heimdall"
    bad.write_bytes(bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = heimdall("bundle", "extract-onnx", bad, "-o", out_dir / "model.onnx")
    assert_error(result, "INVALID_BASE64")
    assert list(out_dir.iterdir()) == []


# --- extract-onnx ----------------------------------------------------------------------------------


def test_extract_onnx_is_byte_identical(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "model.onnx"
    result = heimdall("bundle", "extract-onnx", corpus.signed, "-o", out)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == corpus.onnx
    assert corpus.sha256 in result.stdout
    assert f"{len(corpus.onnx):,} bytes" in result.stdout
    assert [p.name for p in out.parent.iterdir()] == ["model.onnx"]  # no temporary file left


# --- pack ------------------------------------------------------------------------------------------

ALL_COMPONENTS = ["training_config", "performance_metrics", "normalization_stats", "sample_predictions"]


@pytest.mark.parametrize(
    ("flags", "components", "samples"),
    [
        pytest.param(["--no-config"], ALL_COMPONENTS[1:], 5, id="no-config"),
        pytest.param(["--no-metrics"], [ALL_COMPONENTS[0], *ALL_COMPONENTS[2:]], 5, id="no-metrics"),
        pytest.param(
            ["--no-normalization"], [*ALL_COMPONENTS[:2], ALL_COMPONENTS[3]], 5, id="no-normalization"
        ),
        pytest.param(["--no-samples"], ALL_COMPONENTS[:3], 0, id="no-samples"),
        pytest.param(["-n", "2"], ALL_COMPONENTS, 2, id="two-samples"),
    ],
)
def test_pack_component_selection(
    corpus: Corpus, tmp_path: Path, flags: list[str], components: list[str], samples: int
) -> None:
    out = tmp_path / "packed.heimdall"
    result = heimdall(
        "bundle",
        "pack",
        "--onnx",
        corpus.model,
        "--metadata",
        corpus.metadata,
        "-o",
        out,
        "--no-check",
        *flags,
    )
    assert result.returncode == 0, result.stderr
    read = read_bundle(out)
    assert read.bundle.components() == components
    assert len(read.bundle.sample_predictions or []) == samples
    assert read.onnx_sha256 == corpus.sha256
    assert read.bundle.bundle_metadata.bundle_id in result.stdout


def test_pack_gzip_signed_with_named_key(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "packed.heimdall.gz"
    packed = heimdall(
        "bundle", "pack", "--onnx", corpus.model, "--metadata", corpus.metadata, "-o", out,
        "--gzip", "--sign-key", corpus.alice_key, "--key-id", "release-2025", "-d", "nightly [build]",
    )  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    assert "structural" in packed.stdout and "passed" in packed.stdout
    assert (
        "training_config, performance_metrics, normalization_stats, sample_predictions (5)" in packed.stdout
    )
    assert "signed by release-2025" in packed.stdout
    assert out.read_bytes()[:2] == b"\x1f\x8b"

    summary = json_out(heimdall("bundle", "inspect", out, "--json"))
    assert summary["compressed"] is True
    assert summary["document_bytes"] > summary["bundle_bytes"]
    assert summary["signature_key_id"] == "release-2025"
    assert summary["description"] == "nightly [build]"
    text = heimdall("bundle", "inspect", out)
    assert "(gzip)" in text.stdout

    # A named key id is trusted through KEY_ID=PATH; under its fingerprint it is not the same key.
    named = heimdall("bundle", "verify", out, "--trusted-key", f"release-2025={corpus.alice_pub}")
    assert named.returncode == 0, named.stderr
    assert_error(heimdall("bundle", "verify", out, "--trusted-key", corpus.alice_pub), "BAD_SIGNATURE")


def test_pack_fills_identity_and_accepts_legacy_metadata(corpus: Corpus, tmp_path: Path) -> None:
    doc = legacy_bundle_metadata(corpus.onnx)
    del doc["format_version"], doc["bundle_metadata"]["bundle_id"], doc["bundle_metadata"]["created_at"]
    doc["integrity"] = {"onnx_sha256": "0" * 64, "onnx_size_bytes": 1}  # about another model: ignored
    metadata = tmp_path / "legacy-meta.json"
    metadata.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "from-legacy.heimdall"
    result = heimdall("bundle", "pack", "--onnx", corpus.model, "--metadata", metadata, "-o", out)
    assert result.returncode == 0, result.stderr
    read = read_bundle(out)
    assert read.dialect == "canonical"
    assert read.bundle.format_version == "1.0.0"
    assert uuid.UUID(read.bundle.bundle_metadata.bundle_id).version == 4
    assert read.bundle.bundle_metadata.created_at.tzinfo is not None
    assert read.bundle.bundle_metadata.created_by == "trainer@heimdall"
    assert read.bundle.model.version == "1"
    assert read.bundle.integrity is not None and read.bundle.integrity.onnx_sha256 == corpus.sha256


@pytest.mark.parametrize(
    ("content", "code"),
    [
        pytest.param(b"{not json", "INVALID_JSON", id="not-json"),
        pytest.param(b'{"model": {}, "model": {}}', "INVALID_JSON", id="duplicate-keys"),
        pytest.param(b'{"bundle_metadata": {}}', "INVALID_BUNDLE", id="no-model"),
        pytest.param(b'{"format_version": "2.0.0", "model": {}}', "UNSUPPORTED_VERSION", id="version-2"),
    ],
)
def test_pack_refuses_bad_metadata(corpus: Corpus, tmp_path: Path, content: bytes, code: str) -> None:
    metadata = tmp_path / "META.json"
    metadata.write_bytes(content)
    out = tmp_path / "out.heimdall"
    result = heimdall("bundle", "pack", "--onnx", corpus.model, "--metadata", metadata, "-o", out)
    assert_error(result, code)
    assert not out.exists()


def test_pack_refuses_a_model_that_disagrees_with_its_metadata(corpus: Corpus, tmp_path: Path) -> None:
    doc = json.loads(corpus.metadata.read_text(encoding="utf-8"))
    doc["model"]["onnx_opset"] = 13
    metadata = tmp_path / "META.json"
    metadata.write_text(json.dumps(doc), encoding="utf-8")
    out = tmp_path / "out.heimdall"
    result = heimdall("bundle", "pack", "--onnx", corpus.model, "--metadata", metadata, "-o", out)
    assert_error(result, "SHAPE_MISMATCH")
    assert "opset 13" in result.stderr
    assert not out.exists()


# --- migrate, sign, keygen -------------------------------------------------------------------------


def test_migrate_legacy_to_canonical_keeps_the_model(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "migrated.heimdall.gz"
    result = heimdall("bundle", "migrate", corpus.legacy, "-o", out, "--gzip")
    assert result.returncode == 0, result.stderr
    assert "legacy -> canonical" in result.stdout
    read = read_bundle(out)
    assert read.dialect == "canonical"
    assert read.compressed is True
    assert read.onnx_sha256 == corpus.sha256
    assert read.integrity_declared is True
    assert read.bundle.bundle_metadata.created_by == "trainer@heimdall"


def test_migrate_keeps_a_valid_signature(corpus: Corpus, tmp_path: Path) -> None:
    out = tmp_path / "migrated.heimdall"
    result = heimdall("bundle", "migrate", corpus.signed, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "kept" in result.stdout
    verified = heimdall("bundle", "verify", out, "--trusted-key", corpus.alice_pub, "--require-signature")
    assert verified.returncode == 0, verified.stderr


# --- the original Heimdall's fallbacks for missing data ---------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dialect", ["canonical", "legacy"])
def test_seed_fallback_bundle_verifies_inspects_and_migrates(
    corpus: Corpus, tmp_path: Path, dialect: Dialect, compress: bool
) -> None:
    source = tmp_path / "seed.heimdall"
    source.write_bytes(sample_bundle(corpus.onnx, dialect=dialect, fallbacks=True, compress=compress))
    verified = heimdall("bundle", "verify", source, "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json_out(verified)
    assert report["valid"] is True and report["dialect"] == dialect
    assert report["onnx_sha256"] == corpus.sha256

    # Empty fallbacks are absent: nothing in them a consumer could use.
    summary = json_out(heimdall("bundle", "inspect", source, "--json"))
    assert summary["components"] == [] and summary["sample_count"] == 0
    assert summary["normalization_complete"] is None
    assert "none (model only)" in heimdall("bundle", "inspect", source).stdout

    migrated = tmp_path / "migrated.heimdall.gz"
    result = heimdall("bundle", "migrate", source, "-o", migrated, "--gzip")
    assert result.returncode == 0, result.stderr
    read = read_bundle(migrated)
    assert read.dialect == "canonical" and read.onnx_sha256 == corpus.sha256
    assert read.bundle.components() == []
    back = tmp_path / "back.heimdall"
    assert heimdall("bundle", "migrate", migrated, "-o", back).returncode == 0
    assert not set(SEED_FALLBACKS) & set(json.loads(back.read_bytes()))
    onnx = tmp_path / "back.onnx"
    assert heimdall("bundle", "extract-onnx", back, "-o", onnx).returncode == 0
    assert onnx.read_bytes() == corpus.onnx
    diff = json_out(heimdall("bundle", "diff", source, back, "--json"))
    assert diff["components_only_in_a"] == [] and diff["components_only_in_b"] == []
    assert diff["onnx"]["equal"] is True


def test_partly_filled_seed_components(corpus: Corpus, tmp_path: Path) -> None:
    source = tmp_path / "partial.heimdall"
    means = [0.485, 0.456, 0.406]
    source.write_bytes(
        sample_bundle(
            corpus.onnx,
            dialect="legacy",
            fallbacks=True,
            normalization_stats={"feature_means": means},
            performance_metrics={"train_loss": [0.3, 0.2]},
        )
    )
    assert heimdall("bundle", "verify", source).returncode == 0
    summary = json_out(heimdall("bundle", "inspect", source, "--json"))
    assert summary["components"] == ["performance_metrics", "normalization_stats"]
    assert summary["normalization_complete"] is False
    assert "normalization_stats (partial: not usable)" in heimdall("bundle", "inspect", source).stdout
    migrated = tmp_path / "migrated.heimdall"
    assert heimdall("bundle", "migrate", source, "-o", migrated).returncode == 0
    doc = json.loads(migrated.read_bytes())
    assert doc["normalization_stats"] == {"feature_means": means}
    # Read from the legacy lists: the final loss is the last epoch's; empty lists stay empty.
    assert doc["performance_metrics"] == {
        "train_loss": [0.3, 0.2],
        "val_loss": [],
        "train_rmse": [],
        "val_rmse": [],
        "final_train_loss": 0.2,
    }
    assert "training_config" not in doc and "sample_predictions" not in doc
    assert read_bundle(migrated).onnx_sha256 == corpus.sha256


def test_keygen_sign_then_verify(corpus: Corpus, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    created = heimdall("bundle", "keygen", "--out-dir", keys, "--name", "carol")
    assert created.returncode == 0, created.stderr
    private, public = keys / "carol.key", keys / "carol.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.read_text(encoding="ascii").startswith("-----BEGIN PUBLIC KEY-----")
    before = private.read_bytes()
    again = heimdall("bundle", "keygen", "--out-dir", keys, "--name", "carol")
    assert_error(again, "CONFIGURATION_ERROR")  # never overwrites a key
    assert private.read_bytes() == before
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if "key id" in line)

    signed = tmp_path / "signed.heimdall"
    result = heimdall("bundle", "sign", corpus.canonical, "--key", private, "-o", signed)
    assert result.returncode == 0, result.stderr
    assert f"signed by {key_id}" in result.stdout

    verified = heimdall("bundle", "verify", signed, "--trusted-key", public, "--require-signature", "--json")
    assert verified.returncode == 0, verified.stderr
    report = json_out(verified)
    assert report["valid"] is True
    assert report["code"] is None
    assert report["message"] is None
    assert report["signature"] == "verified"
    assert report["onnx_sha256"] == corpus.sha256
    assert report["graph"]["opset"] == 17
    assert [o["name"] for o in report["graph"]["outputs"]] == ["positions", "uncertainties"]
    assert_error(heimdall("bundle", "verify", signed, "--trusted-key", corpus.alice_pub), "BAD_SIGNATURE")


# --- upgrade ---------------------------------------------------------------------------------------


def test_upgrade_converts_an_old_opset_model_which_then_gives_the_reference_outputs(
    corpus: Corpus, tmp_path: Path
) -> None:
    import numpy as np
    import onnxruntime as ort

    model = onnx_backend_model("test_BatchNorm2d_eval")
    source, signed, out = (
        tmp_path / "bn.heimdall",
        tmp_path / "bn-signed.heimdall",
        tmp_path / "bn17.heimdall",
    )
    source.write_bytes(reference_bundle(model))
    assert heimdall("bundle", "sign", source, "--key", corpus.alice_key, "-o", signed).returncode == 0
    before = signed.read_bytes()

    result = heimdall("bundle", "upgrade", signed, "--opset", "17", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "6 -> 17" in result.stdout and "1 checked" in result.stdout
    assert "dropped: the ONNX bytes changed" in result.stdout
    assert signed.read_bytes() == before  # the source is left as it was

    verified = heimdall("bundle", "verify", out, "--json")
    assert verified.returncode == 0, verified.stderr
    report = json_out(verified)
    assert report["graph"]["opset"] == 17 and report["signature"] == "unsigned"
    assert report["onnx_sha256"] != hashlib.sha256(model.onnx).hexdigest()
    extracted = tmp_path / "bn17.onnx"
    assert heimdall("bundle", "extract-onnx", out, "-o", extracted).returncode == 0
    session = ort.InferenceSession(str(extracted), providers=["CPUExecutionProvider"])
    (got,) = session.run(list(model.outputs), model.inputs)
    np.testing.assert_allclose(got, next(iter(model.outputs.values())), rtol=1e-4, atol=1e-5)

    again = heimdall(
        "bundle", "upgrade", source, "--opset", "17", "-o", tmp_path / "again.heimdall", "--json"
    )
    assert again.returncode == 0, again.stderr
    answer = json_out(again)
    assert answer["onnx_sha256"] == report["onnx_sha256"] and answer["signature_dropped"] is False
    assert answer["upgrade"]["result"] == "upgraded" and answer["upgrade"]["samples_checked"] == 1


def test_upgrade_that_fails_writes_nothing(tmp_path: Path) -> None:
    unconvertible = tmp_path / "unconvertible.heimdall"
    unconvertible.write_bytes(
        reference_bundle(ReferenceModel("x", unconvertible_onnx(), {}, {}), with_samples=False)
    )
    model = onnx_backend_model("test_AvgPool2d")
    wrong = tmp_path / "wrong-samples.heimdall"
    off = {name: value * 2 + 1 for name, value in model.outputs.items()}
    wrong.write_bytes(reference_bundle(ReferenceModel(model.name, model.onnx, model.inputs, off)))
    out = tmp_path / "out.heimdall"
    for source, says in ((unconvertible, "cannot convert"), (wrong, "disagrees with sample")):
        result = heimdall("bundle", "upgrade", source, "--opset", "17", "-o", out)
        assert_error(result, "UPGRADE_FAILED")
        assert says in result.stderr and not out.exists()
    not_above = heimdall("bundle", "upgrade", wrong, "--opset", "6", "-o", out)
    assert not_above.returncode == 2 and "opset 6" in not_above.stderr and not out.exists()


# --- diff ------------------------------------------------------------------------------------------


def test_diff_identical_apart_from_identity(corpus: Corpus, tmp_path: Path) -> None:
    # A re-export of the same model: new bundle id and time, signed. Still "the same bundle".
    bundle = read_bundle(corpus.canonical).bundle
    identity = {"bundle_id": str(uuid.uuid4()), "created_at": datetime.now(UTC)}
    reexport = bundle.model_copy(
        update={"bundle_metadata": bundle.bundle_metadata.model_copy(update=identity)}
    )
    copy = tmp_path / "copy.heimdall"
    write_bundle(reexport, corpus.onnx, copy, signing_key=load_private_key(corpus.alice_key))
    result = heimdall("bundle", "diff", corpus.canonical, copy, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    diff = json_out(result)
    assert diff["identical"] is True
    assert diff["onnx"]["equal"] is True
    assert diff["graph"]["io_equal"] is True
    assert {change["path"] for change in diff["metadata"]} == {
        "bundle_metadata.bundle_id",
        "bundle_metadata.created_at",
        "signature.algorithm",
        "signature.key_id",
        "signature.value",
    }
    assert all(change["expected_to_differ"] for change in diff["metadata"])

    text = heimdall("bundle", "diff", corpus.canonical, copy)
    assert text.returncode == 0
    assert "identical" in text.stdout
    assert "expected to differ" in text.stdout


def test_diff_legacy_vs_canonical_metadata(corpus: Corpus) -> None:
    result = heimdall("bundle", "diff", corpus.canonical, corpus.legacy, "--json")
    assert result.returncode == 1
    assert result.stderr == ""  # a difference is not an error
    diff = json_out(result)
    assert diff["identical"] is False
    assert diff["dialects"] == {"a": "canonical", "b": "legacy"}
    changes = {c["path"]: c for c in diff["metadata"]}
    assert changes["model.version"]["a"] == "1.0.0"
    assert changes["model.version"]["b"] == "1"
    assert changes["bundle_metadata.created_by"]["b"] == "trainer@heimdall"
    assert changes["bundle_metadata.heimdall_version"]["change"] == "removed"
    assert changes["bundle_metadata.heimdall_version"]["expected_to_differ"] is True
    assert changes["performance_metrics.train_loss"]["change"] == "added"
    assert diff["onnx"]["equal"] is True
    assert diff["graph"]["io_equal"] is True


def test_diff_models_and_components(corpus: Corpus, tmp_path: Path) -> None:
    fewer = tmp_path / "fewer.heimdall"
    selection = ComponentSelection.only(["training_config", "normalization_stats"])
    write_bundle(read_bundle(corpus.canonical).bundle, corpus.onnx, fewer, selection=selection)
    components = json_out(heimdall("bundle", "diff", corpus.canonical, fewer, "--json"))
    assert components["components_only_in_a"] == ["performance_metrics", "sample_predictions"]
    assert components["components_only_in_b"] == []

    retrained = heimdall("bundle", "diff", corpus.canonical, corpus.retrained, "--json")
    assert retrained.returncode == 1
    weights = json_out(retrained)
    assert weights["onnx"]["equal"] is False
    assert weights["graph"]["io_equal"] is True
    assert [c for c in weights["metadata"] if not c["expected_to_differ"]] == []

    text = heimdall("bundle", "diff", corpus.canonical, corpus.other_graph)
    assert text.returncode == 1
    assert "ONNX model" in text.stdout and "graph inputs/outputs" in text.stdout
    assert "input: float32[batch, 3, 128, 32]" in text.stdout
    assert "output: float32[batch, 256]" in text.stdout


# --- demo ------------------------------------------------------------------------------------------


def test_demo_runs_every_step(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # As if the demo had run here before: it replaces its own files, key pair included.
    (out / "keys").mkdir(parents=True)
    generate_key_pair(out / "keys" / "demo.key", out / "keys" / "demo.pub")
    result = heimdall("bundle", "demo", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all 13 steps behaved as expected" in result.stdout
    assert "BAD_SIGNATURE" in result.stdout and "INVALID_BASE64" in result.stdout
    for name in (
        "model.onnx",
        "META.json",
        "localization-net-v1-v1.0.0.heimdall",
        "localization-net-v1-v1.0.0.signed.heimdall",
        "keys/demo.key",
        "keys/demo.pub",
        "extracted.onnx",
        "legacy.heimdall",
        "legacy-migrated.heimdall",
        "tampered-metadata.heimdall",
        "tampered-base64.heimdall",
    ):
        assert (out / name).is_file(), name
    assert (out / "extracted.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert read_bundle(out / "legacy-migrated.heimdall").dialect == "canonical"


# --- unexpected errors -----------------------------------------------------------------------------

_FAILING_COMMAND = """
import sys
from heimdall.cli import main
from heimdall.cli.bundle import bundle_app

@bundle_app.command()
def explode() -> None:
    raise RuntimeError("simulated bug")

sys.argv = ["heimdall", "bundle", "explode"]
main()
"""


@pytest.mark.parametrize("debug", [False, True], ids=["quiet", "debug"])
def test_unexpected_errors_are_reported_without_traceback(debug: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HEIMDALL_DEBUG"}
    if debug:
        env["HEIMDALL_DEBUG"] = "1"
    result = subprocess.run(
        [sys.executable, "-c", _FAILING_COMMAND],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "error INTERNAL_ERROR: RuntimeError: simulated bug" in result.stderr
    # Only HEIMDALL_DEBUG=1 shows the traceback; otherwise the message says how to get it.
    assert ("Traceback" in result.stderr) is debug
    assert ("HEIMDALL_DEBUG=1" in result.stderr) is not debug
