"""``heimdall bundle sign`` and ``keygen``: ed25519 key pairs and signed bundles.

Signing rewrites a bundle in canonical form with the same compression and ONNX bytes and a new
signature block (:mod:`heimdall.bundle.signing`); ``verify --trusted-key`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from heimdall.bundle.reader import ReadResult
from heimdall.bundle.signing import generate_key_pair, load_private_key
from heimdall.bundle.writer import WriteResult, write_bundle
from heimdall.cli.bundle_common import (
    BundleFile,
    bundle_console,
    bundle_limits,
    check_output,
    decoded_model,
    key_value_table,
    render_written,
    table_row,
)
from heimdall.settings import BundleLimits


@dataclass(frozen=True)
class SignResult:
    """What ``sign`` wrote."""

    read: ReadResult
    written: WriteResult

    @property
    def replaced_key_id(self) -> str | None:
        """The key id of a signature the source carried (now replaced), if any."""
        signature = self.read.bundle.signature
        return signature.key_id if signature is not None else None


def sign_file(
    source: Path, output: Path, key: Path, *, limits: BundleLimits, key_id: str | None = None
) -> SignResult:
    """Write ``source`` signed with ``key`` (canonical form, same compression, same ONNX bytes)."""
    private_key = load_private_key(key)
    with decoded_model(source, limits) as (read, model):
        written = write_bundle(
            read.bundle, model, output, compress=read.compressed, signing_key=private_key, key_id=key_id
        )
    return SignResult(read, written)


def sign(
    file: BundleFile,
    key: Annotated[
        Path,
        typer.Option("--key", exists=True, dir_okay=False, readable=True, help="ed25519 private key (PEM)."),
    ],
    output: Annotated[
        Path, typer.Option("-o", "--output", dir_okay=False, help="The signed bundle to write.")
    ],
    key_id: Annotated[
        str | None,
        typer.Option(
            "--key-id",
            help="Key id to record (default: the key's fingerprint). Verify with --trusted-key KEY_ID=PUB.",
        ),
    ] = None,
) -> None:
    """Sign a bundle with an ed25519 key (over its ONNX sha256 and canonical metadata)."""
    check_output(output)
    result = sign_file(file, output, key, limits=bundle_limits(), key_id=key_id)
    table = render_written("[bold green]signed[/]", output, result.written)
    if result.replaced_key_id is not None:
        table_row(table, "replaced", f"the previous signature by {result.replaced_key_id}")
    bundle_console.print(table)


def create_key_pair(out_dir: Path, name: str) -> tuple[str, Path, Path]:
    """Write ``NAME.key`` (private, 0600) and ``NAME.pub`` in ``out_dir``; refuse to overwrite either."""
    if not name or Path(name).name != name or name.startswith("."):
        raise typer.BadParameter(f"{name!r} is not a plain file name", param_hint="--name")
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    out_dir.mkdir(parents=True, exist_ok=True)
    # generate_key_pair refuses (ConfigurationError, exit 1) when either file already exists.
    return generate_key_pair(private, public), private, public


def keygen(
    out_dir: Annotated[Path, typer.Option("--out-dir", file_okay=False, help="Directory for the key files.")],
    name: Annotated[str, typer.Option("--name", help="Base name of the key files.")] = "heimdall",
) -> None:
    """Generate an ed25519 key pair: NAME.key (private PEM, mode 0600) and NAME.pub (public PEM)."""
    key_id, private, public = create_key_pair(out_dir, name)
    table = key_value_table("[bold green]key pair created[/]")
    table_row(table, "key id", key_id)
    table_row(table, "private key", f"{private} (keep it secret)")
    table_row(table, "public key", str(public))
    bundle_console.print(table)
    bundle_console.print(
        f"[dim]sign: heimdall bundle sign FILE --key {escape(str(private))} -o OUT\n"
        f"verify: heimdall bundle verify FILE --trusted-key {escape(str(public))}[/]"
    )
