"""The core Lambda layer holds what the Lambdas run and nothing else; the test tree's imports stay flat.

``layers/core/build_layer.py`` (run by ``sam build`` through ``layers/core/Makefile``) copies the
``heimdall`` package into the layer less what no Lambda runs. These tests build that tree (without the
pip step) and check it from three sides: nothing in it belongs to the command line, the local stack or
the test kit, or imports an HTTP client or a development tool; every module in it is reached from a
``functions/*/app.py`` handler; and, in a fresh interpreter that sees only the built tree as
``heimdall`` (dependencies from the virtual environment), every module and every handler imports.

The last test walks ``tests/`` itself: shared builders live in ``tests/support``, and no test module
imports another.
"""

from __future__ import annotations

import ast
import json
import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "layers" / "core" / "build_layer.py"
SOURCE_PACKAGE = REPO_ROOT / "layers" / "core" / "heimdall"
FUNCTIONS_DIR = REPO_ROOT / "functions"
TESTS_DIR = REPO_ROOT / "tests"

#: Never in the layer, whatever the build script says: the command line, the local stack, the test kit.
NOT_RUNTIME = ("heimdall.cli", "heimdall.local", "heimdall.testing")

#: HTTP clients: a Lambda reaches AWS through boto3 only (the command line's client is built on httpx).
#: botocore itself loads urllib3 and http.client, so only the others are looked for at run time.
HTTP_CLIENTS = ("httpx", "requests", "aiohttp", "urllib3", "http.client", "urllib.request")
#: Command-line and test tools, and torch (the conversion job's, never a Lambda's).
TOOLS = ("typer", "click", "rich", "moto", "pytest", "hypothesis", "torch")
#: What no module of the layer may import, even inside a function.
FORBIDDEN_IMPORTS = HTTP_CLIENTS + TOOLS


def _within(name: str, roots: tuple[str, ...]) -> bool:
    return any(name == root or name.startswith(root + ".") for root in roots)


@pytest.fixture(scope="module")
def layer_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The layer's ``python`` directory as the build script writes it, dependencies left out."""
    artifacts = tmp_path_factory.mktemp("layer")
    subprocess.run(
        [sys.executable, str(BUILD_SCRIPT), str(artifacts), "--skip-install"],
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return artifacts / "python"


def package_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module of the ``heimdall`` package under ``root``."""
    modules = {}
    for path in sorted((root / "heimdall").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``path`` imports, at any depth (function-level imports included).

    ``from a import b`` gives ``a`` and ``a.b`` (``b`` may be a submodule). A string constant that is
    exactly a ``heimdall.*`` dotted name counts too: child processes are started as
    ``python -m heimdall.bundle._structural_worker``.
    """
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *([node.module] if node.module else [])])
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _names_a_module(node.value):
            names.add(node.value)
    return names


def heimdall_edges(names: set[str], modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that importing ``names`` loads (``a.b.c`` loads ``a`` and ``a.b``)."""
    loaded: set[str] = set()
    for name in names:
        parts = name.split(".")
        loaded.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return loaded & modules.keys()


def _names_a_module(text: str) -> bool:
    return text.startswith("heimdall.") and all(part.isidentifier() for part in text.split("."))


def handler_files() -> list[Path]:
    return sorted(FUNCTIONS_DIR.glob("*/app.py"))


def test_the_layer_leaves_out_what_no_lambda_runs(layer_python: Path) -> None:
    built = sorted(path.relative_to(layer_python) for path in layer_python.rglob("*") if path.is_file())
    source = {path.relative_to(SOURCE_PACKAGE.parent) for path in SOURCE_PACKAGE.rglob("*") if path.is_file()}
    assert Path("heimdall/settings.py") in built, f"the build wrote no package: {built}"
    assert Path("heimdall/api/openapi.json") in built, "the served OpenAPI document must ship"

    assert set(built) <= source, f"files the source package does not have: {set(built) - source}"
    assert not [p for p in built if "__pycache__" in p.parts or p.suffix == ".pyc"]
    shipped = package_modules(layer_python)
    assert not [name for name in shipped if _within(name, NOT_RUNTIME)]
    assert not [p for p in built if "client" in p.name], "an HTTP client does not belong in the layer"


def test_no_module_in_the_layer_imports_what_lambdas_do_not_have(layer_python: Path) -> None:
    offenders = {
        name: sorted(n for n in imported_names(path, name) if _within(n, FORBIDDEN_IMPORTS + NOT_RUNTIME))
        for name, path in package_modules(layer_python).items()
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_every_module_in_the_layer_is_reached_from_a_handler(layer_python: Path) -> None:
    modules = package_modules(layer_python)
    reached: set[str] = set()
    todo = [name for path in handler_files() for name in heimdall_edges(imported_names(path, "app"), modules)]
    assert todo, "no handler imports heimdall: the walk is broken"
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(heimdall_edges(imported_names(modules[name], name), modules))

    assert sorted(modules.keys() - reached) == [], "modules no Lambda runs: leave them out of the layer"


# Runs in a fresh interpreter started with -S (no site-packages, so no editable install of heimdall and
# no PYTHONPATH): argv[1] is JSON [built tree, site-packages dirs, modules, handler files, excluded].
_CHECKER = r"""
import importlib, importlib.util, json, runpy, sys, traceback
from pathlib import Path

tree, site_dirs, modules, handlers, excluded = json.loads(sys.argv[1])
sys.path[:] = [tree, *(p for p in sys.path if p), *site_dirs]
report = {"errors": {}, "found_excluded": [], "outside": []}

for target in modules + handlers:
    folder = str(Path(target).parent)
    try:
        if target.endswith(".py"):  # a handler: as in Lambda, its folder is on the path
            sys.path.insert(0, folder)
            runpy.run_path(target, run_name=f"lambda_{Path(folder).name}_app")
            sys.path.remove(folder)
        else:
            importlib.import_module(target)
    except BaseException:
        report["errors"][target] = traceback.format_exc(limit=-3)
for name in excluded:
    try:
        if importlib.util.find_spec(name) is not None:
            report["found_excluded"].append(name)
    except ImportError:
        pass
for name, module in sorted(sys.modules.items()):
    where = getattr(module, "__file__", None) or ""
    if name.partition(".")[0] == "heimdall" and not where.startswith(tree):
        report["outside"].append(f"{name} from {where or 'nowhere'}")
report["loaded"] = sorted({name.partition(".")[0] for name in sys.modules})
print("LAYER-REPORT " + json.dumps(report))
"""


def test_the_layer_imports_with_nothing_else_on_the_path(layer_python: Path) -> None:
    modules = sorted(package_modules(layer_python))
    handlers = [str(path) for path in handler_files()]
    argument = [str(layer_python) + os.sep, site.getsitepackages(), modules, handlers, list(NOT_RUNTIME)]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-S", "-c", _CHECKER, json.dumps(argument)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=layer_python.parent,
        env={**env, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("LAYER-REPORT ")]
    assert proc.returncode == 0 and lines, f"checker exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    report = json.loads(lines[-1].removeprefix("LAYER-REPORT "))

    assert report["errors"] == {}, "\n".join(f"{t}:\n{tb}" for t, tb in report["errors"].items())
    assert report["outside"] == [], "heimdall modules loaded from outside the built layer"
    assert report["found_excluded"] == []
    assert not set(report["loaded"]) & {"httpx", "requests", "aiohttp", *TOOLS}


def test_no_test_module_imports_another() -> None:
    """Shared builders live in ``tests/support`` and fixtures in ``conftest.py``, never in a test module."""
    offenders = set()
    for path in sorted(TESTS_DIR.rglob("*.py")):
        module = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for name in imported_names(path, module):
            parts = name.split(".")
            test_parts = [i for i, part in enumerate(parts) if part.startswith("test_")]
            if parts[0] == "tests" and test_parts:
                offenders.add(f"{path.relative_to(REPO_ROOT)} imports {'.'.join(parts[: test_parts[0] + 1])}")
    assert sorted(offenders) == [], "\n".join(sorted(offenders))
