"""The layers of docs/architecture.md: the method imports neither the data layer, the glue nor the experiments, and
the data layer imports nothing of the method, the glue or the experiments (a static reading of every import)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hf_intertrain"
ALLOWED = {"method": ("hf_intertrain.method", "hf_intertrain.constants"), "data": ("hf_intertrain.data", "hf_intertrain.constants")}


def imported_modules(path: Path) -> set[str]:
    """Every hf_intertrain module a file imports, relative imports resolved."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.startswith("hf_intertrain")}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_itself_and_the_shared_constants(layer):
    files = sorted((PACKAGE / layer).rglob("*.py"))
    assert files
    outside = {
        str(path.relative_to(PACKAGE)): sorted(name for name in imported_modules(path) if not name.startswith(ALLOWED[layer]))
        for path in files
    }
    assert {path: names for path, names in outside.items() if names} == {}


def test_the_reading_sees_relative_imports():
    assert "hf_intertrain.method.tracker" in imported_modules(PACKAGE / "method" / "sampler.py")
    assert "hf_intertrain.constants" in imported_modules(PACKAGE / "method" / "mixing.py")
