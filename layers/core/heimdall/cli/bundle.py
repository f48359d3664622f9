"""``heimdall bundle``: the command group of the offline tools for ``.heimdall`` bundles.

Every command is a thin layer over the library (:mod:`heimdall.bundle`): the reader's integrity pass,
the writer, signing and :func:`~heimdall.bundle.verify.verify_bundle`. Nothing in the commands parses
or validates a bundle by itself. Each is split into an *operation* (a plain function returning what it
did, used by the demo too) and a *rendering* of that result as rich tables or JSON; they live by
concept in :mod:`~heimdall.cli.bundle_read` (inspect, verify, extract-onnx),
:mod:`~heimdall.cli.bundle_write` (pack, migrate, upgrade), :mod:`~heimdall.cli.bundle_sign` (sign,
keygen), :mod:`~heimdall.cli.bundle_diff` and :mod:`~heimdall.cli.bundle_demo`, with what they share in
:mod:`~heimdall.cli.bundle_common`. This module registers them, in the order ``--help`` lists them.

Errors are raised as :class:`~heimdall.errors.HeimdallError` and printed by the top-level group
(:mod:`heimdall.cli`) as ``error CODE: message`` with exit status 1; usage errors exit 2.
"""

from __future__ import annotations

import typer

from heimdall.cli.bundle_demo import demo
from heimdall.cli.bundle_diff import diff
from heimdall.cli.bundle_read import extract_onnx, inspect, verify
from heimdall.cli.bundle_sign import keygen, sign
from heimdall.cli.bundle_write import migrate, pack, upgrade

bundle_app = typer.Typer(
    name="bundle",
    help=(
        "Offline tools for .heimdall bundles: inspect, verify, extract, pack, migrate, upgrade, sign, "
        "diff.\n\n"
        "Exit codes: 0 success, 1 a failed check or operation (error code and message on stderr), "
        "2 usage error."
    ),
    no_args_is_help=True,
)

bundle_app.command()(inspect)
bundle_app.command()(verify)
bundle_app.command("extract-onnx")(extract_onnx)
bundle_app.command()(pack)
bundle_app.command()(migrate)
bundle_app.command()(upgrade)
bundle_app.command()(sign)
bundle_app.command()(keygen)
bundle_app.command()(diff)
bundle_app.command()(demo)
