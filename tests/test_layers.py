"""The package layering stays true: imports only point down, and none hide inside functions.

values → log → projections → history → engine → gateway → ops; the Python
client SDK (client/) builds on values only. An internal import inside a
function is refused too: it is how an upward edge or a cycle hides.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["values", "log", "storage", "projections", "history", "engine", "gateway", "ops"]
ALLOWED: dict[str, set[str]] = {pkg: set(LAYERS[: i + 1]) for i, pkg in enumerate(LAYERS)}
ALLOWED["client"] = {"values", "client"}
INTERNAL = set(ALLOWED)


def _imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported top-level package, at module level?) for every import of a Tape package."""
    tree = ast.parse(path.read_text(), str(path))
    module_level: set[int] = set()
    for node in tree.body:
        for inner in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            module_level.add(id(inner))
    package = path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [package] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top in INTERNAL:
                found.append((node.lineno, top, id(node) in module_level))
    return found


def _package_files() -> list[Path]:
    return sorted(p for pkg in INTERNAL if (ROOT / pkg).is_dir() for p in (ROOT / pkg).rglob("*.py"))


def test_every_layer_is_present() -> None:
    missing = [pkg for pkg in INTERNAL if not (ROOT / pkg / "__init__.py").exists()]
    assert not missing, f"packages missing: {missing}"


def test_imports_only_point_down() -> None:
    upward = []
    for path in _package_files():
        package = path.relative_to(ROOT).parts[0]
        for line, target, _ in _imports(path):
            if target not in ALLOWED[package]:
                upward.append(f"{path.relative_to(ROOT)}:{line} imports {target} (a {package} module may import "
                              f"{', '.join(sorted(ALLOWED[package]))})")
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_internal_imports_inside_functions() -> None:
    local = [f"{path.relative_to(ROOT)}:{line} imports {target} inside a function"
             for path in _package_files() for line, target, top in _imports(path) if not top]
    assert not local, "function-local imports of Tape packages:\n" + "\n".join(local)


def test_the_walk_sees_an_upward_edge(tmp_path: Path) -> None:
    """The checker itself: an upward and a hidden import are both reported."""
    sample = ROOT / "log" / "_layer_probe_sample.py"
    sample.write_text("import engine\n\ndef f():\n    from gateway import node\n")
    try:
        found = _imports(sample)
    finally:
        sample.unlink()
    assert (1, "engine", True) in found
    assert (4, "gateway", False) in found
