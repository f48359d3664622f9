"""``heimdall bundle demo``: the offline bundle tools on a generated model, every step checked."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import sys
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter
from typing import Annotated

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from heimdall.bundle.models import Component
from heimdall.bundle.reader import read_bundle
from heimdall.bundle.signing import load_trusted_key
from heimdall.bundle.verify import VerificationReport, verify_bundle
from heimdall.cli.bundle_common import bundle_console, bundle_limits, fmt_bytes
from heimdall.cli.bundle_diff import compare_metadata, diff_bundles, render_diff
from heimdall.cli.bundle_read import describe_bundle, extract_model, render_inspect, render_verify
from heimdall.cli.bundle_sign import create_key_pair, sign_file
from heimdall.cli.bundle_write import migrate_file, pack_bundle, render_pack
from heimdall.errors import HeimdallError

#: Set (to anything but 0) to print the traceback of a step that raised something unexpected.
_DEBUG_VARIABLE = "HEIMDALL_DEBUG"

# --- demo ------------------------------------------------------------------------------------------


class DemoStepFailed(Exception):
    """A demo step did not behave as expected."""


@dataclass
class _StepOutcome:
    number: int
    title: str
    expected: str
    observed: str
    ok: bool | None  # None: not run
    seconds: float = 0.0


@dataclass
class _DemoFiles:
    root: Path
    model: Path = field(init=False)
    metadata: Path = field(init=False)
    packed: Path = field(init=False)
    signed: Path = field(init=False)
    keys: Path = field(init=False)
    extracted: Path = field(init=False)
    legacy: Path = field(init=False)
    migrated: Path = field(init=False)
    tampered_metadata: Path = field(init=False)
    tampered_base64: Path = field(init=False)

    def __post_init__(self) -> None:
        r = self.root
        self.model = r / "model.onnx"
        self.metadata = r / "META.json"
        self.packed = r / "localization-net-v1-v1.0.0.heimdall"
        self.signed = r / "localization-net-v1-v1.0.0.signed.heimdall"
        self.keys = r / "keys"
        self.extracted = r / "extracted.onnx"
        self.legacy = r / "legacy.heimdall"
        self.migrated = r / "legacy-migrated.heimdall"
        self.tampered_metadata = r / "tampered-metadata.heimdall"
        self.tampered_base64 = r / "tampered-base64.heimdall"


class BundleDemo:
    """The walk-through behind ``heimdall bundle demo``: every step checks what it shows.

    The steps run in order and share their outputs (the model, the key, the signed bundle); the
    first step that does not behave as expected stops the walk-through, and :meth:`run` returns False.
    """

    KEY_NAME = "demo"
    TAMPERED_FIELD = ("performance_metrics", "final_val_accuracy")

    def __init__(self, out_dir: Path, console: Console) -> None:
        self.files = _DemoFiles(out_dir)
        self.console = console
        self.limits = bundle_limits()
        self.outcomes: list[_StepOutcome] = []
        self._onnx = b""
        self._sha256 = ""
        self._key_id = ""

    def _steps(self) -> list[tuple[str, str, Callable[[], str]]]:
        return [
            ("Build a localization-net ONNX model", "a real ONNX model", self.build_model),
            ("Write META.json", "metadata with all four components, no id or time", self.write_metadata),
            ("Pack a canonical bundle", "structural pass, 4 components, same sha256", self.pack),
            ("Generate an ed25519 key pair", "private key 0600, public key", self.keygen),
            ("Sign the bundle", "signature by the new key", self.sign),
            ("Verify against the trusted key", "valid, signature verified", self.verify),
            ("Inspect the signed bundle", "canonical, signed (not verified), 4 components", self.inspect),
            ("Extract the ONNX model", "byte-identical to the source model", self.extract),
            ("Write a legacy-dialect bundle", "read back as the legacy dialect", self.write_legacy),
            ("Migrate it to canonical form", "legacy -> canonical, same sha256", self.migrate),
            ("Diff the signed and migrated bundles", "metadata differs, same model", self.diff),
            ("Tamper with one metadata field", "rejected with BAD_SIGNATURE", self.tamper_metadata),
            ("Corrupt one base64 character", "rejected with INVALID_BASE64", self.corrupt_base64),
        ]

    def run(self) -> bool:
        """Run every step; True when each behaved as expected."""
        self.files.root.mkdir(parents=True, exist_ok=True)
        self.console.print(
            Panel(
                "Building, signing, verifying and breaking a .heimdall bundle in "
                f"[bold]{escape(str(self.files.root))}[/]",
                title="heimdall bundle demo",
                expand=False,
            )
        )
        failed = False
        for number, (title, expected, action) in enumerate(self._steps(), start=1):
            if failed:
                self.outcomes.append(
                    _StepOutcome(number, title, expected, "not run: an earlier step failed", None)
                )
                continue
            self.console.rule(f"[bold cyan]{number}. {escape(title)}", align="left")
            started = perf_counter()
            try:
                observed, ok = action(), True
            except DemoStepFailed as exc:
                observed, ok = str(exc), False
            except HeimdallError as exc:
                observed, ok = f"unexpected {exc.code}: {exc.message}", False
            except Exception as exc:
                if os.environ.get(_DEBUG_VARIABLE, "").strip() not in {"", "0"}:
                    traceback.print_exception(exc, file=sys.stderr)
                observed, ok = f"unexpected {type(exc).__name__}: {exc}", False
            seconds = perf_counter() - started
            mark = "[green]✓[/]" if ok else "[red]✗[/]"
            self.console.print(f"{mark} {escape(observed)} [dim]({seconds:.2f} s)[/]")
            self.outcomes.append(_StepOutcome(number, title, expected, observed, ok, seconds))
            failed = not ok
        self._summary()
        return all(o.ok for o in self.outcomes)

    def _summary(self) -> None:
        table = Table(title="[bold]summary[/]", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("#", justify="right")
        table.add_column("step")
        table.add_column("expected")
        table.add_column("observed", overflow="fold")
        table.add_column("")
        for o in self.outcomes:
            mark = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[dim]-[/]"}[o.ok]
            table.add_row(str(o.number), escape(o.title), escape(o.expected), escape(o.observed), mark)
        self.console.rule()
        self.console.print(table)
        passed = sum(1 for o in self.outcomes if o.ok)
        total = len(self.outcomes)
        if passed == total:
            self.console.print(
                f"[bold green]all {total} steps behaved as expected[/]; "
                f"files in {escape(str(self.files.root))}"
            )
        else:
            self.console.print(f"[bold red]{total - passed} of {total} steps did not behave as expected[/]")

    @staticmethod
    def _expect(condition: bool, message: str) -> None:
        if not condition:
            raise DemoStepFailed(message)

    # --- the steps (each returns what it observed, or raises) -----------------------------------

    def build_model(self) -> str:
        from heimdall.testing.sample_models import localization_net_onnx  # noqa: PLC0415 - onnx, numpy

        self._onnx = localization_net_onnx()
        self.files.model.write_bytes(self._onnx)
        self._sha256 = hashlib.sha256(self._onnx).hexdigest()
        self.console.print(
            f"{escape(str(self.files.model))}: {fmt_bytes(len(self._onnx))}\nsha256 {self._sha256}"
        )
        return f"{len(self._onnx):,} bytes, sha256 {self._sha256[:16]}…"

    def write_metadata(self) -> str:
        from heimdall.testing.sample_bundles import sample_bundle_metadata  # noqa: PLC0415

        doc = sample_bundle_metadata(self._onnx)
        # Left for `pack` to fill in: a new uuid4, the current time and the current format version.
        del doc["format_version"], doc["bundle_metadata"]["bundle_id"], doc["bundle_metadata"]["created_at"]
        self.files.metadata.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        components = [c.value for c in Component if c.value in doc]
        self._expect(len(components) == len(Component), f"META.json has only {components}")
        self.console.print(
            f"{escape(str(self.files.metadata))}: model {doc['model']['model_name']} "
            f"{doc['model']['version']}, "
            f"components {', '.join(components)}"
        )
        return f"{len(components)} components, {len(doc['sample_predictions'])} samples"

    def pack(self) -> str:
        result = pack_bundle(self.files.model, self.files.metadata, self.files.packed, limits=self.limits)
        render_pack(result, self.console)
        bundle = result.written.bundle
        self._expect(
            result.written.onnx_sha256 == self._sha256, "the packed model's sha256 differs from the source"
        )
        self._expect(bundle.components() == [c.value for c in Component], f"components {bundle.components()}")
        self._expect(uuid.UUID(bundle.bundle_metadata.bundle_id).version == 4, "bundle_id is not a uuid4")
        self._expect(result.structure is not None, "the structural pass did not run")
        return f"{fmt_bytes(result.written.bytes_written)}, structural pass ok, sha256 matches"

    def keygen(self) -> str:
        keys = self.files.keys
        for stale in (keys / f"{self.KEY_NAME}.key", keys / f"{self.KEY_NAME}.pub"):
            stale.unlink(missing_ok=True)  # the demo's own key from an earlier run
        self._key_id, private, public = create_key_pair(keys, self.KEY_NAME)
        mode = stat.S_IMODE(private.stat().st_mode)
        self.console.print(
            f"key id {self._key_id}\n{escape(str(private))} (mode {mode:o})\n{escape(str(public))}"
        )
        self._expect(mode & 0o077 == 0, f"the private key is readable by others (mode {mode:o})")
        return f"key id {self._key_id}"

    def sign(self) -> str:
        key = self.files.keys / f"{self.KEY_NAME}.key"
        result = sign_file(self.files.packed, self.files.signed, key, limits=self.limits)
        signature = result.written.bundle.signature
        self.console.print(f"{escape(str(self.files.signed))}: {fmt_bytes(result.written.bytes_written)}")
        self._expect(
            signature is not None and signature.key_id == self._key_id, "no signature by the new key"
        )
        return f"signed by {self._key_id}"

    def verify(self) -> str:
        trusted = load_trusted_key(self.files.keys / f"{self.KEY_NAME}.pub")
        report = verify_bundle(
            self.files.signed, limits=self.limits, trusted_keys=[trusted], require_signature=True
        )
        if not report.valid:
            raise DemoStepFailed(f"refused: {report.code}: {report.message}")
        render_verify(self.files.signed, report, self.console)
        self._expect(report.signature_state == "verified", f"signature state {report.signature_state}")
        self._expect(report.structure is not None, "no structural report")
        return "valid: integrity, signature verified, structural pass"

    def inspect(self) -> str:
        read = read_bundle(self.files.signed, limits=self.limits)
        summary = describe_bundle(self.files.signed, read)
        render_inspect(summary, self.console)
        self._expect(summary["dialect"] == "canonical", f"dialect {summary['dialect']}")
        self._expect(summary["signature_key_id"] == self._key_id, "not signed by the demo key")
        self._expect(len(summary["components"]) == len(Component), f"components {summary['components']}")
        return f"canonical {summary['format_version']}, signed by {self._key_id}, {len(Component)} components"

    def extract(self) -> str:
        read = extract_model(self.files.signed, self.files.extracted, self.limits)
        extracted = self.files.extracted.read_bytes()
        digest = hashlib.sha256(extracted).hexdigest()
        self.console.print(f"source    sha256 {self._sha256}\nextracted sha256 {digest}")
        self._expect(
            extracted == self._onnx and read.onnx_sha256 == self._sha256, "the extracted model differs"
        )
        return "sha256 equal to the source model's"

    def write_legacy(self) -> str:
        from heimdall.testing.sample_bundles import legacy_bundle_metadata  # noqa: PLC0415

        # As the older training service wrote bundles: the whole document through json.dumps, with the
        # model inline and no integrity block. (This project's writer only writes the canonical form.)
        doc = legacy_bundle_metadata(self._onnx)
        doc["model"]["onnx_model_base64"] = base64.b64encode(self._onnx).decode("ascii")
        self.files.legacy.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        read = read_bundle(self.files.legacy, limits=self.limits)
        self.console.print(
            f"{escape(str(self.files.legacy))}: exported_by, version {doc['model']['version']!r}, "
            "flat output_shape, "
            "per-epoch metrics, samples with lat/lon"
        )
        self._expect(read.dialect == "legacy", f"read back as {read.dialect}")
        self._expect(read.onnx_sha256 == self._sha256, "the legacy bundle's model differs")
        return f"read back as {read.dialect}, integrity declared: {read.integrity_declared}"

    def migrate(self) -> str:
        result = migrate_file(self.files.legacy, self.files.migrated, limits=self.limits)
        self.console.print(
            f"{escape(str(self.files.migrated))}: {result.before.dialect} -> {result.after.dialect}"
        )
        self._expect(result.before.dialect == "legacy", f"source read as {result.before.dialect}")
        self._expect(result.after.dialect == "canonical", f"output read as {result.after.dialect}")
        self._expect(result.after.onnx_sha256 == self._sha256, "the model changed")
        self._expect(result.after.integrity_declared, "no integrity block written")
        return f"{result.before.dialect} -> {result.after.dialect}, sha256 unchanged"

    def diff(self) -> str:
        result = diff_bundles(self.files.signed, self.files.migrated, limits=self.limits)
        render_diff(result, self.files.signed.name, self.files.migrated.name, self.console)
        self._expect(result.onnx_equal and result.graph_io_equal, "the models differ")
        self._expect(not result.identical and bool(result.counted), "no metadata difference found")
        same = compare_metadata(read_bundle(self.files.packed, limits=self.limits).bundle, result.a.bundle)[0]
        self._expect(all(c.expected for c in same), "signing changed more than the signature")
        return f"{len(result.counted)} metadata fields differ, same ONNX and graph I/O"

    def tamper_metadata(self) -> str:
        doc = json.loads(self.files.signed.read_text(encoding="utf-8"))
        block, name = self.TAMPERED_FIELD
        before = doc[block][name]
        doc[block][name] = round(before + 0.05, 4)
        self.files.tampered_metadata.write_text(json.dumps(doc, indent=2), encoding="utf-8")
        self.console.print(f"{block}.{name}: {before} -> {doc[block][name]}")
        trusted = load_trusted_key(self.files.keys / f"{self.KEY_NAME}.pub")
        report = verify_bundle(self.files.tampered_metadata, limits=self.limits, trusted_keys=[trusted])
        return self._expect_rejection(report, "BAD_SIGNATURE")

    def corrupt_base64(self) -> str:
        data = bytearray(self.files.signed.read_bytes())
        marker = b'"onnx_model_base64": "'
        start = data.find(marker)
        self._expect(start >= 0, "the model field was not found")
        at = start + len(marker) + 1000
        self.console.print(f"byte {at}: {chr(data[at])!r} -> '*'")
        data[at : at + 1] = b"*"
        self.files.tampered_base64.write_bytes(bytes(data))
        report = verify_bundle(self.files.tampered_base64, limits=self.limits)
        return self._expect_rejection(report, "INVALID_BASE64")

    def _expect_rejection(self, report: VerificationReport, code: str) -> str:
        if report.valid:
            raise DemoStepFailed("accepted, but it should have been rejected")
        self.console.print(f"[red]error {report.code}[/]: {escape(report.message or '')}")
        self._expect(report.code == code, f"rejected with {report.code}, expected {code}")
        return f"rejected with {report.code}"


def demo(
    out: Annotated[
        Path, typer.Option("--out", file_okay=False, help="Directory for the demo's files.")
    ] = Path("heimdall-demo"),
) -> None:
    """Walk through the bundle tools on a generated localization-net model, checking every step.

    Builds a real ONNX model, packs, signs, verifies (full structural pass), inspects and extracts a
    bundle, migrates a legacy-dialect bundle, diffs the two, and shows a tampered metadata field
    (BAD_SIGNATURE) and a corrupted base64 character (INVALID_BASE64) being rejected. Exit 0 only
    when every step behaved as expected.
    """
    if not BundleDemo(out, bundle_console).run():
        raise typer.Exit(1)
