"""Loading an app directory: modules → functions by path, plus `schema.py`; hot reload."""
from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import AppLoadError, FunctionNotFound
from engine.functions import FunctionDef
from engine.schema import Schema


def _describe_load_error(exc: BaseException, path: Path) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(path.parent))
              or f.filename == str(path)]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else str(path)
    return f"{where}: {type(exc).__name__}: {exc}"


@dataclass
class App:
    """A loaded app: its functions by `module:function` path and its schema."""

    directory: Path
    functions: dict[str, FunctionDef] = field(default_factory=dict)
    schema: Schema = field(default_factory=lambda: Schema({}))
    _mtimes: dict[Path, float] = field(default_factory=dict)
    _package: str = ""

    @classmethod
    def load(cls, directory: str | Path) -> "App":
        """Load every module of `directory`; raises AppLoadError naming the file and line."""
        app = cls(Path(directory).resolve())
        if not app.directory.is_dir():
            raise AppLoadError(f"{app.directory}: app directory does not exist")
        app._package = "tape_app_" + hashlib.sha1(str(app.directory).encode()).hexdigest()[:10]
        app._load_all()
        return app

    def _module_files(self) -> list[Path]:
        files = []
        for path in sorted(self.directory.rglob("*.py")):
            rel = path.relative_to(self.directory)
            if any(part.startswith((".", "_")) or part in ("node_modules", "public") for part in rel.parts[:-1]):
                continue
            if rel.name.startswith((".", "_")):
                continue
            files.append(path)
        return files

    def _load_all(self) -> None:
        for name in [m for m in sys.modules if m == self._package or m.startswith(self._package + ".")]:
            del sys.modules[name]
        package = types.ModuleType(self._package)
        package.__path__ = [str(self.directory)]  # type: ignore[attr-defined]
        sys.modules[self._package] = package
        functions: dict[str, FunctionDef] = {}
        schema = Schema({})
        mtimes: dict[Path, float] = {}
        for path in self._module_files():
            rel = path.relative_to(self.directory).with_suffix("")
            module_path = "/".join(rel.parts)
            module = self._import(path, ".".join(rel.parts))
            mtimes[path] = path.stat().st_mtime
            if module_path == "schema":
                found = getattr(module, "schema", None)
                if not isinstance(found, Schema):
                    raise AppLoadError(f"{path}: schema.py must define `schema = define_schema({{...}})`")
                schema = found
            for attr, value in vars(module).items():
                if isinstance(value, FunctionDef) and not attr.startswith("_"):
                    if getattr(value.handler, "__module__", None) != module.__name__:
                        continue  # imported from another module: registered there
                    value.path = f"{module_path}:{attr}"
                    functions[value.path] = value
        self.functions, self.schema, self._mtimes = functions, schema, mtimes

    def _import(self, path: Path, dotted: str) -> types.ModuleType:
        name = f"{self._package}.{dotted}"
        parts = dotted.split(".")
        for i in range(1, len(parts)):
            parent = f"{self._package}." + ".".join(parts[:i])
            if parent not in sys.modules:
                pkg = types.ModuleType(parent)
                pkg.__path__ = [str(self.directory.joinpath(*parts[:i]))]  # type: ignore[attr-defined]
                sys.modules[parent] = pkg
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:  # any error in app code becomes a located load error
            del sys.modules[name]
            raise AppLoadError(_describe_load_error(exc, path)) from exc
        return module

    def changed(self) -> bool:
        """True when a module file was added, removed or modified since the last load."""
        current = {p: p.stat().st_mtime for p in self._module_files()}
        return current != self._mtimes

    def reload(self) -> "App":
        """Return a freshly loaded copy of this app (the current one stays valid if loading fails)."""
        fresh = App(self.directory, _package=self._package)
        fresh._load_all()
        return fresh

    def function(self, path: str, *, allow_internal: bool = False) -> FunctionDef:
        """Look up a function by path; internal functions only when `allow_internal`."""
        fn = self.functions.get(normalize_path(path))
        if fn is None or (fn.internal and not allow_internal):
            raise FunctionNotFound(f"Could not find public function for '{path}'")
        return fn


def normalize_path(path: str) -> str:
    """Accept `mod:fn`, `mod.py:fn`, `mod.js:fn` and `mod` (default export → `mod:default`)."""
    if ":" not in path:
        path = f"{path}:default"
    module, _, name = path.partition(":")
    for suffix in (".py", ".js", ".ts"):
        if module.endswith(suffix):
            module = module[: -len(suffix)]
    return f"{module}:{name}"
