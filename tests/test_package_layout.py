"""The package's shape: no import circle, a small top level, old import paths kept, a complete wheel."""

from __future__ import annotations

import ast
import importlib
import os
import runpy
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ROOT / "helpers"
# Old module paths that now alias a moved module (one module object under two names).
ALIASES = {
    "helpers.demo_models": "helpers.demo.models",
    "helpers.tiny_models": "helpers.models.tiny",
    "helpers.download": "helpers.checkpoints.download",
    "helpers.http_source": "helpers.checkpoints.http_source",
    "helpers.train_demo": "helpers.demo.train",
}
# The public paths outside code imports (issue #23); each must import.
PUBLIC = [
    "helpers.config",
    "helpers.session",
    "helpers.pipeline",
    "helpers.segmentation",
    "helpers.masks",
    "helpers.regions",
    "helpers.clip_scoring",
    "helpers.selection",
    "helpers.evaluation",
    "helpers.data",
    "helpers.data.types",
    "helpers.models",
    "helpers.tiny_models",
    "helpers.demo_models",
    "helpers.finetune",
    "helpers.distributed",
    "helpers.tuner",
    "helpers.checkpoints",
    "helpers.download",
    "helpers.http_source",
    "helpers.instances",
    "helpers.export",
    "helpers.autolabel",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The helpers modules ``path`` imports (at any depth of the file, lazy imports too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def test_no_import_circle():
    files = [p for p in HELPERS.rglob("*.py") if module_name(p) not in ALIASES]
    known = {module_name(p) for p in files}
    graph = {module_name(p): imported_modules(p, known) for p in files}
    # A package's face (its __init__) is not a step of a circle: importing a submodule runs it, but
    # the face's own arrows only hand names on. Circles are looked for between the modules proper.
    faces = {module_name(p) for p in files if p.name == "__init__.py"}
    graph = {m: {t for t in targets if t not in faces} for m, targets in graph.items() if m not in faces}
    state: dict[str, int] = {}
    circles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_top_level_holds_the_pipeline_core_only():
    top = [p.stem for p in HELPERS.glob("*.py") if p.stem != "__init__" and f"helpers.{p.stem}" not in ALIASES]
    assert len(top) <= 20, f"{len(top)} modules at the top of helpers/: {sorted(top)}"
    for package in [p for p in HELPERS.iterdir() if (p / "__init__.py").is_file()]:
        doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
        summary = doc.split("\n\n")[0] if doc else ""
        assert summary and len(summary.splitlines()) <= 2, f"{package.name}/__init__.py: say in two lines what it is"


@pytest.mark.parametrize("name", PUBLIC)
def test_public_paths_import(name):
    importlib.import_module(name)


@pytest.mark.parametrize("old, new", ALIASES.items())
def test_old_paths_are_the_moved_modules(old, new):
    assert importlib.import_module(old) is importlib.import_module(new)


@pytest.mark.parametrize(
    "module",
    [
        "helpers.run_notebooks",
        "helpers.checkpoints",
        "helpers.distributed",
        "helpers.demo.train",
        "helpers.train_demo",
        "helpers.autolabel",
    ],
)
@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # imported by other tests already
def test_python_m_entry_points_answer_help(module, monkeypatch, capsys):
    """``python -m <module> --help`` (run in this process: a new interpreter's imports cost ~12 s here)."""
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    monkeypatch.delitem(sys.modules, module, raising=False)  # an alias imported by another test: run the file
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_demo_settings_live_with_the_profiles():
    from helpers import config
    from helpers.demo_models import DEMO_SELECTION, DEMO_SETTINGS

    assert DEMO_SETTINGS is config.DEMO_SETTINGS and DEMO_SELECTION is config.DEMO_SELECTION


# Run in a fresh interpreter with the installed wheel first on the path and the editable finder off.
WHEEL_CHECK = textwrap.dedent(
    """
    import importlib, os, pkgutil, sys
    sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    target = sys.argv[1]
    import helpers
    assert helpers.__file__.startswith(target), helpers.__file__
    names = [m.name for m in pkgutil.walk_packages(helpers.__path__, "helpers.") if not m.name.endswith("__main__")]
    for name in names:
        importlib.import_module(name)
    from helpers.demo_models import load_demo_models
    from helpers.session import checkpoint_paths
    from helpers.config import load_config
    sam, clip = load_demo_models()
    assert sam.identity and clip.identity
    paths = checkpoint_paths(load_config({"SAMCLIP_PROFILE": "demo", "SAMCLIP_HOME": sys.argv[2]}))
    assert all(str(p).startswith(target) for p in paths.values()), paths
    print(len(names), "modules")
    """
)


def tree_state(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_wheel_installs_alone_and_writes_nothing_into_the_package(tmp_path):
    wheels, target, source = tmp_path / "wheels", tmp_path / "site", tmp_path / "source"
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    shutil.copytree(ROOT / "helpers", source / "helpers", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheels, source],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    package = target / "helpers"
    assert (package / "demo" / "weights" / "sam_demo.pth").is_file()
    for path in package.rglob("*"):  # read-only, as in a system site-packages (root ignores the bits:
        path.chmod(0o555 if path.is_dir() else 0o444)  # the listing below checks that nothing was written)
    package.chmod(0o555)
    before = tree_state(package)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAMCLIP_")}
    env.update(PYTHONPATH=str(target), PYTHONDONTWRITEBYTECODE="1")
    run = subprocess.run(
        [sys.executable, "-c", WHEEL_CHECK, str(target), str(tmp_path / "home")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "modules" in run.stdout
    assert tree_state(package) == before, "the run wrote into the installed package"
