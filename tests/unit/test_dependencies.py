"""Every package src/etcdbr imports is declared in pyproject.toml: in the dependencies, or in the
extra of the store or codec that needs it (an undeclared import works here only because another
package happened to pull it in)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "etcdbr"
#: The extras the tool's own code may rely on (the others are for tests, benchmarks and lint).
RUNTIME_EXTRAS = ("s3", "gcs", "abs", "zstd", "k8s")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in RUNTIME_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    return {_normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", r).group(0)) for r in requirements}


def _imported_modules() -> dict[str, set[str]]:
    """Absolute imports of third-party modules: dotted name -> the files that import it. For
    ``from a import b`` the module ``a.b`` when it is one (``from google.cloud import storage``)."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                names = [n for n in names if _spec(n) is not None] or [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top != "etcdbr" and top not in sys.stdlib_module_names:
                    found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def _spec(name: str):
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


def _owner(module_file: Path, candidates: list[str]) -> str | None:
    """The distribution among ``candidates`` (those providing the top-level name) that installed
    ``module_file``: a namespace like ``google`` has many."""
    if len(candidates) == 1:
        return _normalize(candidates[0])
    for name in candidates:
        for file in md.distribution(name).files or ():
            if Path(file.locate()).resolve() == module_file:
                return _normalize(name)
    return None


def _module_file(name: str) -> Path | None:
    spec = _spec(name)
    if spec is None:
        return None
    if spec.origin and spec.origin not in ("namespace", "built-in", "frozen"):
        return Path(spec.origin).resolve()
    return None


def test_every_imported_package_is_declared():
    providers = md.packages_distributions()
    declared = _declared()
    imports = _imported_modules()
    for known in ("grpc", "google.protobuf", "cryptography", "requests", "google_crc32c", "google.cloud.storage"):
        assert any(n == known or n.startswith(known + ".") for n in imports), f"the import scan misses {known}"
    undeclared, unknown = {}, []
    for name, files in sorted(imports.items()):
        module_file = _module_file(name)
        if module_file is None:
            unknown.append(name)
            continue
        dist = _owner(module_file, providers.get(name.split(".")[0], []))
        if dist is None:
            unknown.append(name)
        elif dist not in declared:
            undeclared.setdefault(dist, set()).update(files)
    assert not unknown, f"imported modules whose installed distribution cannot be told: {unknown}"
    assert not undeclared, "imported but not declared in pyproject.toml: " + "; ".join(
        f"{dist} (by {', '.join(sorted(files))})" for dist, files in sorted(undeclared.items()))


def _lock() -> dict[str, tuple[str, int]]:
    """requirements.lock as name -> (pinned version, number of hashes)."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (REPO / "requirements.lock").read_text().splitlines():
        pin = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if pin:
            name = _normalize(pin.group(1))
            pins[name] = (pin.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_the_lock_covers_pyproject():
    """requirements.lock (scripts/lock), from which the image installs with --require-hashes, pins
    every requirement of the tool with its store and codec extras, and the build backend, at a
    version pyproject allows; every pin carries hashes."""
    from packaging.requirements import Requirement

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    project = pyproject["project"]
    requirements = list(project["dependencies"]) + list(pyproject["build-system"]["requires"])
    for extra in RUNTIME_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    pins = _lock()
    assert len(pins) > 20
    for text in requirements:
        req = Requirement(text)
        name = _normalize(req.name)
        assert name in pins, f"requirements.lock lacks {req.name}: run scripts/lock"
        version = pins[name][0]
        assert req.specifier.contains(version, prereleases=True), \
            f"requirements.lock pins {req.name}=={version}, outside pyproject's {req.specifier}: run scripts/lock"
    unhashed = sorted(name for name, (_, hashes) in pins.items() if not hashes)
    assert not unhashed, f"requirements.lock pins without hashes: {unhashed}"
