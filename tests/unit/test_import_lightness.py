"""Lambda entry points stay light (DESIGN section 2).

A fresh interpreter imports every ``functions/*/app.py`` handler and every module of the ``heimdall``
package (except the command line), one at a time, and none of them may load torch, onnx, onnxruntime,
moto or typer. Heavy dependencies belong inside the function that needs them.
"""

from __future__ import annotations

import json
import os
import pkgutil
import subprocess
import sys
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FUNCTIONS_DIR = REPO_ROOT / "functions"

FORBIDDEN = ("torch", "onnx", "onnxruntime", "moto", "typer")

#: Subtrees of ``heimdall`` that are not checked. Only the command line: it is built on typer and is
#: never on a Lambda's path. Anything else a Lambda could import must pass.
EXCLUDED_SUBTREES = ("heimdall.cli",)

# Runs in the fresh interpreter. argv: JSON list of forbidden top-level names, JSON list of targets
# (dotted module names, or paths of handler files). A meta-path hook records where each forbidden
# package was first imported from, so a failure names the line to fix, not only the module.
_CHECKER = r"""
import importlib, importlib.util, json, sys, traceback
from pathlib import Path

forbidden = tuple(json.loads(sys.argv[1]))
targets = json.loads(sys.argv[2])
first_import = {}

class _Witness:
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in forbidden and top not in first_import:
            frames = [f for f in traceback.extract_stack()[:-1] if "importlib" not in f.filename]
            first_import[top] = [f"{f.filename}:{f.lineno}" for f in reversed(frames[-3:])]
        return None  # only watching: the normal finders do the import

sys.meta_path.insert(0, _Witness())

def loaded():
    return {name for name in forbidden if name in sys.modules}

def load(target):
    if not target.endswith(".py"):
        importlib.import_module(target)
        return
    path = Path(target)
    name = f"lambda_{path.parent.name}_app"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))  # as in Lambda, the function's folder is on the path
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))

report = {"preloaded": sorted(loaded()), "checked": [], "offenders": {}, "errors": {}}
for target in targets:
    before = loaded()
    try:
        load(target)
    except BaseException:
        report["errors"][target] = traceback.format_exc(limit=-3)
    report["checked"].append(target)
    new = sorted(loaded() - before)
    if new:
        report["offenders"][target] = {name: first_import.get(name, []) for name in new}
print("IMPORT-REPORT " + json.dumps(report))
"""


@dataclass
class ImportReport:
    """What a fresh interpreter loaded while importing the targets, one at a time."""

    preloaded: list[str]
    checked: list[str]
    #: target -> {forbidden package it pulled in -> the frames that imported it, innermost first}
    offenders: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: target -> the traceback of its import failing
    errors: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        lines = []
        if self.preloaded:
            lines.append(f"already loaded when the interpreter started: {', '.join(self.preloaded)}")
        for target, pulled in self.offenders.items():
            for name, frames in pulled.items():
                lines.append(f"importing {target} loaded {name!r}, first imported at {' <- '.join(frames)}")
        for target, tb in self.errors.items():
            lines.append(f"importing {target} failed:\n{tb}")
        return "\n".join(lines)


def check_imports(targets: list[str]) -> ImportReport:
    """Import ``targets`` one by one in a fresh interpreter and report any forbidden package they load."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHECKER, json.dumps(FORBIDDEN), json.dumps(targets)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("IMPORT-REPORT ")]
    assert proc.returncode == 0 and lines, (
        f"checker exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    return ImportReport(**json.loads(lines[-1].removeprefix("IMPORT-REPORT ")))


def is_excluded(module: str) -> bool:
    return any(module == root or module.startswith(root + ".") for root in EXCLUDED_SUBTREES)


def heimdall_modules() -> list[str]:
    """Every module of the ``heimdall`` package, found on disk without importing any of them.

    ``pkgutil.walk_packages`` would import each subpackage (``heimdall.cli`` included) to find its
    children and silently skip any that fails to import; ``pkgutil.iter_modules`` per directory gives
    the same list with no side effects.
    """
    spec = find_spec("heimdall")
    assert spec is not None and spec.submodule_search_locations, "the heimdall package is not installed"
    found = ["heimdall"]

    def walk(paths: list[str], prefix: str) -> None:
        for info in pkgutil.iter_modules(paths, prefix):
            found.append(info.name)
            if info.ispkg:
                directory = Path(getattr(info.module_finder, "path", "")) / info.name.rpartition(".")[2]
                walk([str(directory)], info.name + ".")

    walk(list(spec.submodule_search_locations), "heimdall.")
    return sorted(found)


def handler_files() -> list[str]:
    return sorted(str(path) for path in FUNCTIONS_DIR.glob("*/app.py"))


def test_lambda_entry_points_do_not_load_heavy_packages() -> None:
    modules = heimdall_modules()
    assert "heimdall.settings" in modules, f"module discovery is broken: {modules}"
    # Core modules first, so a forbidden import is blamed on the module that makes it rather than on
    # a handler that happens to import that module first.
    targets = [m for m in modules if not is_excluded(m)] + handler_files()

    report = check_imports(targets)

    assert report.checked == targets
    if report.preloaded or report.offenders or report.errors:
        pytest.fail(report.describe(), pytrace=False)


def test_only_the_command_line_is_excluded() -> None:
    assert EXCLUDED_SUBTREES == ("heimdall.cli",), "only the command line may skip the lightness check"
    skipped = [m for m in heimdall_modules() if is_excluded(m)]
    assert all(m == "heimdall.cli" or m.startswith("heimdall.cli.") for m in skipped), skipped


def test_the_check_catches_a_heavy_import(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    handler = tmp_path / "heavy" / "app.py"
    handler.parent.mkdir()
    handler.write_text("import json\nimport onnx  # what a handler must never do\n")

    report = check_imports(["heimdall.settings", str(handler), "json"])

    assert list(report.offenders) == [str(handler)]
    assert list(report.offenders[str(handler)]) == ["onnx"]
    assert any(f"{handler}:2" in frame for frame in report.offenders[str(handler)]["onnx"])
    assert "loaded 'onnx'" in report.describe()
    assert not report.errors
