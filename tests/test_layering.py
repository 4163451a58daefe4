"""Import layering: supernet <- search <- service, and the files copied into exported folders stay self-contained."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STDLIB = set(sys.stdlib_module_names)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(module, level) of every import in the file; level > 0 for relative imports, module '' for `from . import`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and not node.module:
                found.extend((alias.name, node.level) for alias in node.names)
            else:
                found.append((node.module or "", node.level))
    return found


def _absolute(path: Path, module: str, level: int) -> str:
    """Resolve a relative import against the file's package (e.g. `.model` in supernet/x.py -> supernet.model)."""
    if not level:
        return module
    package = list(path.relative_to(ROOT).parent.parts)
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _files(package: str) -> list[Path]:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    return files


def _top_levels(path: Path) -> set[str]:
    return {_absolute(path, m, level).split(".")[0] for m, level in _imports(path)}


@pytest.mark.parametrize(("package", "forbidden"), [("supernet", {"search", "service"}), ("search", {"service"})])
def test_lower_layers_never_import_higher_ones(package: str, forbidden: set[str]) -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(_top_levels(p) & forbidden) for p in _files(package)}
    assert {k: v for k, v in offenders.items() if v} == {}


# The files copied verbatim into every exported folder, and the siblings each may import (they travel with it).
EXPORTED_SIBLINGS = {
    "modules.py": {"factorised", "factors", "schedules"},
    "factorised.py": {"factors"},
    "modeling_nasprune.py": {"modules", "schedules", "factors", "graphs"},
    "graphs.py": set(),
    "factors.py": set(),
    "schedules.py": set(),
}


@pytest.mark.parametrize("name", sorted(EXPORTED_SIBLINGS))
def test_exported_files_import_only_torch_transformers_stdlib_and_their_siblings(name: str) -> None:
    path = ROOT / "supernet" / name
    torch_free = name in ("factors.py", "schedules.py")  # also imported by torch-free code (counting, the space)
    allowed = STDLIB | {"__future__"} | (set() if torch_free else {"torch", "transformers"})
    for module, level in _imports(path):
        if level:
            assert level == 1 and module in EXPORTED_SIBLINGS[name], f"{name}: relative import {'.' * level}{module}"
        else:
            assert module.split(".")[0] in allowed, f"{name}: {module}"


def test_the_modeling_file_imports_the_modules() -> None:
    assert ("modules", 1) in _imports(ROOT / "supernet" / "modeling_nasprune.py")


def test_extract_copies_every_exported_sibling() -> None:
    text = (ROOT / "supernet" / "extract.py").read_text()
    for name in EXPORTED_SIBLINGS:
        assert name.removesuffix(".py") in text


def test_the_import_parser_sees_relative_and_absolute_imports() -> None:
    """Guard for the checker itself."""
    package = ROOT / "supernet"
    imports = _imports(package / "model.py")
    assert ("config", 1) in imports and ("modules", 1) in imports
    assert _absolute(package / "model.py", "config", 1) == "supernet.config"
    cli = ROOT / "service" / "cli.py"
    assert "supernet" in _top_levels(cli)
