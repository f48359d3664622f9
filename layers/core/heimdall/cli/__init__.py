"""The ``heimdall`` command line (typer + rich).

``app`` is the top-level typer application; ``main`` is the console-script entry point. Sub-apps
hold the commands (``heimdall bundle ...`` today; the local stack, conversion and API commands join
them as they arrive).

Errors never reach the user as a traceback. The top-level group catches them around every command:

* a :class:`~heimdall.errors.HeimdallError` prints ``error CODE: message`` in red on stderr and
  exits 1 (a failed check or operation);
* a usage error exits 2 (click's own handling, left as it is);
* an ``OSError`` (a file that cannot be written, a full disk) prints ``error IO_ERROR: ...`` and
  exits 1;
* anything else is a bug: it prints ``error INTERNAL_ERROR: ...`` with a hint to rerun with
  ``HEIMDALL_DEBUG=1``, which adds the traceback, and exits 1.

This package is the one part of ``heimdall`` allowed to import typer; no Lambda imports it.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text
from typer.core import TyperGroup

from heimdall import __version__
from heimdall.cli.bundle import bundle_app
from heimdall.cli.convert import convert
from heimdall.cli.deploy import deploy_app
from heimdall.cli.endpoint import infer  # also registers `heimdall deploy usage|health`
from heimdall.cli.jobs import jobs_app
from heimdall.cli.local import demo, local_app
from heimdall.cli.models import model_export, model_import, models_list
from heimdall.cli.uploads import uploads_app
from heimdall.errors import HeimdallError

#: Set to 1 to see the traceback of an unexpected error.
DEBUG_VARIABLE = "HEIMDALL_DEBUG"
#: Exit status of a failed check or operation (usage errors exit 2, through click).
EXIT_FAILURE = 1

_stderr = Console(stderr=True, highlight=False)


def print_error(code: str, message: str) -> None:
    """Print ``error CODE: message`` in red on stderr, on one logical line (never wrapped)."""
    _stderr.print(Text(f"error {code}: {message}", style="red"), soft_wrap=True)


def _debug() -> bool:
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() in {"1", "true", "yes", "on"}


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {exc.filename}" if exc.filename else reason


def _report_unexpected(exc: BaseException) -> None:
    if _debug():
        traceback.print_exception(exc, file=sys.stderr)
        hint = ""
    else:
        hint = f" (this is a bug; rerun with {DEBUG_VARIABLE}=1 for the traceback)"
    detail = str(exc) or "(no message)"
    print_error("INTERNAL_ERROR", f"{type(exc).__name__}: {detail}{hint}")


class HeimdallGroup(TyperGroup):
    """The top-level command group: turns every error a command raises into a message and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        """Invoke the chosen command; see the module docstring for what happens to its errors."""
        try:
            return super().invoke(ctx)
        except HeimdallError as exc:
            print_error(exc.code, exc.message)
            raise typer.Exit(EXIT_FAILURE) from None
        except (typer.Exit, typer.Abort, typer.TyperException, BrokenPipeError):
            raise  # click's own control flow: exit codes, usage errors (2), closed pipes
        except OSError as exc:  # the file system refused (permissions, full disk): not a bug
            print_error("IO_ERROR", _describe_os_error(exc))
            raise typer.Exit(EXIT_FAILURE) from None
        except Exception as exc:
            _report_unexpected(exc)
            raise typer.Exit(EXIT_FAILURE) from None


app = typer.Typer(
    name="heimdall",
    cls=HeimdallGroup,
    help=(
        "Heimdall Export: turn trained PyTorch checkpoints into validated, portable models, and move "
        "them between Heimdall instances as .heimdall bundles.\n\n"
        "Exit codes: 0 success, 1 a failed check or operation (the error code and message on stderr), "
        "2 usage error."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    pretty_exceptions_show_locals=False,
)
app.add_typer(bundle_app, name="bundle")
app.command("convert")(convert)
app.command("demo")(demo)
app.add_typer(local_app, name="local")
app.command("list")(models_list)
app.command("export")(model_export)
app.command("import")(model_import)
app.add_typer(jobs_app, name="jobs")
app.add_typer(uploads_app, name="uploads")
app.add_typer(deploy_app, name="deploy")
app.command("infer")(infer)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"heimdall {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Show the version and exit.", callback=_show_version, is_eager=True),
    ] = False,
) -> None:
    """Heimdall Export command line."""


def main() -> None:
    """Console-script entry point (``heimdall``)."""
    try:
        app(prog_name="heimdall")
    except HeimdallError as exc:  # raised outside a command, e.g. while reading settings
        print_error(exc.code, exc.message)
        raise SystemExit(EXIT_FAILURE) from None
    except Exception as exc:
        _report_unexpected(exc)
        raise SystemExit(EXIT_FAILURE) from None


__all__ = ["app", "main", "print_error"]
