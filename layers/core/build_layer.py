"""Build the core Lambda layer: the run-time part of the ``heimdall`` package and its dependencies.

``sam build`` runs this through ``layers/core/Makefile`` (``BuildMethod: makefile``). SAM's own
``python3.12`` build method copies the whole of ``layers/core`` into the layer, and ``layers/core``
also holds code no Lambda ever runs: the command line (``heimdall.cli``, typer and the HTTP client),
the local stack (``heimdall.local``: gateway, stack, demo), the test kit (``heimdall.testing``:
in-memory fakes and samples) and the OpenAPI writer (``python -m heimdall.api``). Shipping them
costs layer size and cold-start unzip time, and invites a handler to import something that only works
on a laptop. This script writes the layer Lambda reads from ``/opt/python``:

* ``python/<dependencies>``: ``requirements.txt`` installed with pip as binary wheels for the Lambda
  runtime (CPython 3.12, x86_64, glibc 2.34), whatever machine builds it;
* ``python/heimdall``: the package without :data:`EXCLUDED` and without bytecode caches.

The exclusions are named here and nowhere else. ``tests/unit/test_layer_build.py`` builds the tree
with ``--skip-install`` and checks that every module left is one a Lambda handler reaches and that
they all import with nothing but the built tree (and their dependencies) on the path.

Usage: ``python build_layer.py ARTIFACTS_DIR [--skip-install]`` (the Makefile passes SAM's
``$(ARTIFACTS_DIR)``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: Parts of ``heimdall`` left out of the layer, as paths relative to the package: no Lambda runs them.
#: The three subpackages, and ``python -m heimdall.api``, which writes or checks the committed OpenAPI
#: document in a source tree (the document itself, ``api/openapi.json``, is served and stays).
EXCLUDED = ("cli", "local", "testing", "api/__main__.py")

#: Python version and platforms of the Lambda runtime the layer is built for (template.yaml's
#: CompatibleRuntimes and CompatibleArchitectures). The python3.12 runtime has glibc 2.34, so any of
#: these manylinux wheels runs there; pip needs them named one by one.
RUNTIME_PYTHON = "3.12"
RUNTIME_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")


def copy_package(source: Path, target: Path) -> list[Path]:
    """Copy the ``heimdall`` package at ``source`` to ``target``, less :data:`EXCLUDED`.

    Returns the copied files, relative to ``target``, sorted.
    """
    excluded = {source / name for name in EXCLUDED}

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {name for name in names if Path(directory, name) in excluded}
        return skipped | {name for name in names if name == "__pycache__" or name.endswith(".pyc")}

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=ignore)
    return sorted(path.relative_to(target) for path in target.rglob("*") if path.is_file())


def install_requirements(requirements: Path, target: Path) -> None:
    """``pip install`` the requirements into ``target`` as wheels built for the Lambda runtime.

    No bytecode (``--no-compile``): it would be compiled for the interpreter that builds, not
    necessarily the runtime's. The console scripts pip writes to ``bin/`` are removed: nothing on
    Lambda runs them, and their first line names the build machine's interpreter.
    """
    platforms = [arg for platform in RUNTIME_PLATFORMS for arg in ("--platform", platform)]
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
            *("--requirement", str(requirements), "--target", str(target), "--upgrade", "--no-compile"),
            *("--implementation", "cp", "--python-version", RUNTIME_PYTHON, "--only-binary=:all:"),
            *platforms,
        ],
        check=True,
    )
    shutil.rmtree(target / "bin", ignore_errors=True)


def build(artifacts_dir: Path, *, install: bool = True) -> Path:
    """Write the layer into ``artifacts_dir``; returns its ``python`` directory."""
    python_dir = artifacts_dir / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    if install:
        install_requirements(HERE / "requirements.txt", python_dir)
    copy_package(HERE / "heimdall", python_dir / "heimdall")
    return python_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("artifacts_dir", type=Path, help="where the layer goes (SAM's ARTIFACTS_DIR)")
    parser.add_argument("--skip-install", action="store_true", help="copy the package only, no pip")
    args = parser.parse_args(argv)
    build(args.artifacts_dir, install=not args.skip_install)
    return 0


if __name__ == "__main__":
    sys.exit(main())
