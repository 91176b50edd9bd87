"""Loading an app directory: modules → functions by path, plus `schema.py` and `auth.config.py`; hot reload."""
from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.crons import CronJobs, check_crons, load_crons
from engine.errors import AppLoadError, FunctionNotFound
from engine.functions import FunctionDef
from engine.http_router import HttpRouter, load_http
from engine.schema import Schema
from engine.system_functions import SYSTEM_FUNCTIONS, SYSTEM_PREFIX


def _describe_load_error(exc: BaseException, path: Path) -> str:
    if isinstance(exc, AppLoadError):  # already names its file and line (crons.py, http.py registrations)
        return str(exc)
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith(str(path.parent))
              or f.filename == str(path)]
    where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else str(path)
    return f"{where}: {type(exc).__name__}: {exc}"


AUTH_CONFIG = "auth.config.py"
AUTH_ALGORITHMS = ("RS256", "ES256")
_OIDC_KEYS = frozenset({"domain", "application_id"})
_CUSTOM_JWT_KEYS = frozenset({"type", "issuer", "jwks", "algorithm", "application_id"})
_CAMEL_KEYS = {"applicationID": "application_id", "applicationId": "application_id"}


@dataclass(frozen=True, eq=False)
class AuthProvider:
    """One entry of `auth.config.py`'s `providers`: an issuer whose signed tokens identify users.

    An OIDC provider (`type` "oidc", from ``{"domain", "application_id"}``)
    publishes its keys through ``/.well-known/openid-configuration``; a custom
    JWT provider names its keys (`jwks`: a URL or an inline JWKS) and its one
    `algorithm`. `application_id` is the required ``aud`` (None: any audience).
    """

    type: str
    issuer: str
    application_id: str | None
    jwks: str | dict[str, Any] | None = None
    algorithm: str | None = None

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The signing algorithms this provider's tokens may use (pinned: never HS*/none)."""
        return (self.algorithm,) if self.algorithm else AUTH_ALGORITHMS

    def describe(self) -> str:
        """How error messages name the provider."""
        return f"{self.issuer} ({'custom JWT' if self.type == 'customJwt' else 'OIDC'})"


def _entry_lines(path: Path) -> tuple[int | None, list[int]]:
    """Line of the `providers = ...` assignment and of each literal list element (for error messages)."""
    try:
        tree = ast.parse(path.read_text(), str(path))
    except (OSError, SyntaxError, ValueError):
        return None, []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "providers" for t in targets):
                elts = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else []
                return node.lineno, [e.lineno for e in elts]
    return None, []


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://")) and len(value) > 8


def _parse_provider(entry: Any, where: str) -> AuthProvider:
    """Check one `providers` entry (Convex's keys in snake_case); AppLoadError naming `where` otherwise."""
    if not isinstance(entry, dict):
        raise AppLoadError(f"{where}: each provider must be a dict, got {type(entry).__name__}")
    for key in entry:
        if key in _CAMEL_KEYS:
            raise AppLoadError(f"{where}: unknown key {key!r}: use {_CAMEL_KEYS[key]!r} (Convex's keys in snake_case)")
    kind = entry.get("type")
    if kind is None:
        unknown = sorted(set(map(str, entry)) - _OIDC_KEYS)
        if unknown:
            raise AppLoadError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for an OIDC provider "
                               "(keys: 'domain', 'application_id'; a custom JWT provider sets type='customJwt')")
        domain, app_id = entry.get("domain"), entry.get("application_id")
        if not _is_url(domain):
            raise AppLoadError(f"{where}: 'domain' must be the issuer's URL (https://...), got {domain!r}")
        if not isinstance(app_id, str) or not app_id:
            raise AppLoadError(f"{where}: 'application_id' (the tokens' required audience) must be a non-empty "
                               f"string, got {app_id!r}")
        return AuthProvider("oidc", domain, app_id)
    if kind != "customJwt":
        raise AppLoadError(f"{where}: 'type' must be 'customJwt' (or absent for an OIDC provider), got {kind!r}")
    unknown = sorted(set(map(str, entry)) - _CUSTOM_JWT_KEYS)
    if unknown:
        raise AppLoadError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for a custom JWT provider "
                           "(keys: 'type', 'issuer', 'jwks', 'algorithm', 'application_id')")
    issuer, jwks, algorithm = entry.get("issuer"), entry.get("jwks"), entry.get("algorithm")
    app_id = entry.get("application_id")
    if not isinstance(issuer, str) or not issuer:
        raise AppLoadError(f"{where}: 'issuer' must be a non-empty string (the tokens' iss), got {issuer!r}")
    if isinstance(jwks, dict):
        if not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
            raise AppLoadError(f"{where}: an inline 'jwks' must be a JWKS: {{'keys': [...]}} with at least one key")
    elif not _is_url(jwks):
        raise AppLoadError(f"{where}: 'jwks' must be the key set's URL (https://...) or an inline JWKS dict, "
                           f"got {jwks!r}")
    if algorithm not in AUTH_ALGORITHMS:
        raise AppLoadError(f"{where}: 'algorithm' must be one of {', '.join(AUTH_ALGORITHMS)}, got {algorithm!r}")
    if app_id is not None and (not isinstance(app_id, str) or not app_id):
        raise AppLoadError(f"{where}: 'application_id' must be a non-empty string when given, got {app_id!r}")
    return AuthProvider("customJwt", issuer, app_id, jwks, algorithm)


def load_providers(module: types.ModuleType, path: Path) -> tuple[AuthProvider, ...]:
    """The checked `providers` of a loaded `auth.config.py`; AppLoadError with file:line when malformed."""
    line, lines = _entry_lines(path)
    at = f"{path}:{line}" if line else str(path)
    if not hasattr(module, "providers"):
        raise AppLoadError(f"{path}: auth.config.py must define `providers = [...]` (a list of provider dicts)")
    found = module.providers
    if not isinstance(found, (list, tuple)):
        raise AppLoadError(f"{at}: `providers` must be a list of dicts, got {type(found).__name__}")
    out = []
    for i, entry in enumerate(found):
        where = f"{path}:{lines[i]}" if i < len(lines) else at
        out.append(_parse_provider(entry, f"{where}: providers[{i}]"))
    return tuple(out)


@dataclass
class App:
    """A loaded app: its functions by `module:function` path, its schema and its auth providers."""

    directory: Path
    functions: dict[str, FunctionDef] = field(default_factory=dict)
    schema: Schema = field(default_factory=lambda: Schema({}))
    auth_providers: tuple[AuthProvider, ...] = ()
    crons: CronJobs | None = None  # `crons.py`'s registry, when the app has one
    http: HttpRouter | None = None  # `http.py`'s router, when the app has one
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
        providers: tuple[AuthProvider, ...] = ()
        mtimes: dict[Path, float] = {}
        crons: CronJobs | None = None
        http: HttpRouter | None = None
        for path in self._module_files():
            if path.parent == self.directory and path.name == AUTH_CONFIG:
                providers = load_providers(self._import(path, "_auth_config"), path)
                mtimes[path] = path.stat().st_mtime
                continue
            rel = path.relative_to(self.directory).with_suffix("")
            module_path = "/".join(rel.parts)
            module = self._import(path, ".".join(rel.parts))
            mtimes[path] = path.stat().st_mtime
            if module_path == "crons":
                crons = load_crons(module, path)
            if module_path == "http":
                http = load_http(module, path)
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
        if crons is not None:
            check_crons(crons, functions)
        self.functions, self.schema, self._mtimes = functions, schema, mtimes
        self.crons = crons
        self.http = http
        self.auth_providers = providers

    def _import(self, path: Path, dotted: str) -> types.ModuleType:
        name = f"{self._package}.{dotted}"
        parts = dotted.split(".")
        for i in range(1, len(parts)):
            parent = f"{self._package}." + ".".join(parts[:i])
            if parent not in sys.modules:
                pkg = types.ModuleType(parent)
                pkg.__path__ = [str(self.directory.joinpath(*parts[:i]))]  # type: ignore[attr-defined]
                sys.modules[parent] = pkg
        if name in sys.modules:  # already imported by an earlier module of this load (`from .tasks import fn`)
            return sys.modules[name]
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
        if fn is None and path.startswith(SYSTEM_PREFIX):
            fn = SYSTEM_FUNCTIONS.get(normalize_path(path))  # the dashboard's built-ins (admin only)
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
