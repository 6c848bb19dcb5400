"""Architecture: the import-linter contracts of pyproject.toml hold, fail on a cycle added on purpose, and
importing the code has no side effects (no web libraries in the worker, no folders created)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LINTER = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
PACKAGES = tuple(_LINTER["root_packages"])
CONTRACTS = {contract["id"]: contract["name"] for contract in _LINTER["contracts"]}
# Libraries only the web needs: a worker process must never load them.
WEB_ONLY = ("flask_login", "flask_wtf", "wtforms", "flask_limiter")
# Modules whose job is to run something when imported (the WSGI app, `python -m` mains).
ENTRY_POINTS = ("service.wsgi",)
_STATUS = re.compile(r"^(?P<name>.+) (?P<status>KEPT|BROKEN)(?: \(.*\))?$")


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment minus SKETCHWATCH_* settings and PYTHONPATH (a fresh install's defaults), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SKETCHWATCH_") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def _lint(root: Path) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run lint-imports on the packages under ``root``; return the run and {contract id: status}."""
    # import-linter finds the packages with find_spec: under ``root`` (cwd, PYTHONPATH), the sys.path
    # entries come before the editable install's import hook, so a copy is what gets analysed. Check it.
    where = subprocess.run(
        [sys.executable, "-c",
         "import json, sys, importlib.util as u; print(json.dumps([u.find_spec(p).origin for p in sys.argv[1:]]))",
         *PACKAGES],
        cwd=root, env=_clean_env(PYTHONPATH=str(root)), capture_output=True, text=True, check=True,
    )
    for origin in json.loads(where.stdout):
        assert Path(origin).is_relative_to(root), f"{origin} is not under {root}"
    run = subprocess.run(
        [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
         "--no-cache", "--no-logo"],
        # A wide console keeps each contract's name and status on one line.
        cwd=root, env=_clean_env(PYTHONPATH=str(root), COLUMNS="1000"), capture_output=True, text=True, timeout=300,
    )
    by_name = {}
    for line in run.stdout.splitlines():
        match = _STATUS.match(line.strip())
        if match:
            by_name[match["name"]] = match["status"]
    statuses = {cid: by_name.get(name, "MISSING") for cid, name in CONTRACTS.items()}
    return run, statuses


def _copy_packages(dest: Path) -> Path:
    """The Python sources of every root package and pyproject.toml, copied under ``dest``."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static", "templates", "shipped"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_import_contracts_hold():
    run, statuses = _lint(ROOT)
    assert statuses == {cid: "KEPT" for cid in CONTRACTS}, run.stdout + run.stderr
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def pristine_statuses(tmp_path_factory) -> dict[str, str]:
    """Contract statuses of an unmodified copy of the packages (the control for the mutations below)."""
    _, statuses = _lint(_copy_packages(tmp_path_factory.mktemp("pristine")))
    return statuses


# (file, line appended to it, the contract it must break, the import the report must show)
MUTATIONS = [
    ("service/core/settings.py", "import worker.app", "layers", "service.core.settings -> worker.app"),
    ("models/raster.py", "import service.core.settings", "models-pure", "models.raster -> service.core.settings"),
    ("models/raster.py", "import service", "models-pure", "models.raster -> service"),
    ("models/artifact.py", "import models.scoring", "no-cycles-models-worker", "No cycles are allowed in models."),
    ("service/core/settings.py", "import flask_login", "core-not-web", "service.core.settings -> flask_login"),
    ("service/core/model_info.py", "import service.extensions", "core-not-web",
     "service.core.model_info -> service.extensions"),
    ("service/api/__init__.py", "import service.app", "blueprints-not-factory", "service.api -> service.app"),
    ("worker/__init__.py", "import service.extensions", "worker-only-core", "worker -> service.extensions"),
    ("service/__init__.py", "import bench", "bench-on-top", "service -> bench"),
    ("service/app.py", "import service.cli", "cli-on-top", "service.app -> service.cli"),
]


@pytest.mark.parametrize(("path", "line", "contract", "shown"), MUTATIONS, ids=[f"{m[2]}:{m[1]}" for m in MUTATIONS])
def test_an_import_added_on_purpose_breaks_its_contract(tmp_path, pristine_statuses, path, line, contract, shown):
    assert pristine_statuses[contract] == "KEPT", f"{contract} is already broken without the mutation"
    root = _copy_packages(tmp_path)
    target = root / path
    target.write_text(target.read_text() + f"\n{line}  # added by test_architecture\n")
    run, statuses = _lint(root)
    assert statuses[contract] == "BROKEN", run.stdout + run.stderr
    assert shown in run.stdout, run.stdout
    assert run.returncode == 1


def _import_everything(packages: tuple[str, ...], cwd: Path) -> dict:
    """Import every module of ``packages`` (entry points aside) in a fresh interpreter run in ``cwd``."""
    script = """
import importlib, json, pkgutil, sys

def walk(name):
    module = importlib.import_module(name)
    yield name
    for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
        child = f"{name}.{info.name}"
        if info.name != "__main__" and child not in ENTRY_POINTS:
            yield from walk(child)

ENTRY_POINTS = set(sys.argv[1].split(","))
imported = [m for package in sys.argv[2:] for m in walk(package)]
print(json.dumps({"imported": imported, "loaded": sorted(sys.modules)}))
"""
    run = subprocess.run(
        [sys.executable, "-c", script, ",".join(ENTRY_POINTS), *packages],
        cwd=cwd, env=_clean_env(PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.splitlines()[-1])


def test_importing_the_worker_loads_no_web_library(tmp_path):
    result = _import_everything(("worker",), tmp_path)
    assert len(result["imported"]) > 1
    assert not [m for m in result["loaded"] if m.split(".")[0] in WEB_ONLY]


def test_importing_any_module_creates_no_folder(tmp_path):
    result = _import_everything(("service", "worker", "models"), tmp_path)
    assert "service.queue" in result["imported"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []
