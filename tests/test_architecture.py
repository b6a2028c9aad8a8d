"""docs/ARCHITECTURE.md's layer table is the rule: every import inside the package keeps to it, and no
trainer imports another."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "seeking"


def layer_table() -> dict[str, tuple[set[str], set[str]]]:
    """layer -> (its modules, the layers it may import), read from docs/ARCHITECTURE.md."""
    table = {}
    for line in (ROOT / "docs" / "ARCHITECTURE.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or cells[0] in ("layer", "---"):
            continue
        modules = {m.strip("/") for m in re.findall(r"`([^`]+)`", cells[1])}
        table[cells[0]] = (modules, {c.strip() for c in cells[2].split(",")})
    return table


def top_unit(path: Path) -> str:
    """The module or subpackage of ``src/seeking`` that ``path`` belongs to."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _unit(name: str) -> str:
    """``name`` imported from the package root: a module or subpackage, or else the face."""
    return name if (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file() else "__init__"


def imported_units(path: Path, source: str | None = None) -> set[str]:
    """The modules and subpackages of ``seeking`` that the module at ``path`` (with ``source``, by
    default its text) imports; ``__init__`` stands for the package face."""
    package = list(path.relative_to(PACKAGE).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = base + (node.module.split(".") if node.module else [])
            found.update([target[0]] if target else [_unit(alias.name) for alias in node.names])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "seeking":
            found.add(_unit(node.module.split(".")[1]) if "." in node.module else "__init__")
        elif isinstance(node, ast.Import):
            found.update(_unit(a.name.split(".")[1]) for a in node.names if a.name.startswith("seeking."))
    return found


def test_the_table_names_every_module_of_the_package_once():
    listed = [m for modules, _ in layer_table().values() for m in modules]
    assert len(listed) == len(set(listed))
    units = {top_unit(p) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert units == set(listed), "docs/ARCHITECTURE.md must place every module in a layer"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_keeps_to_the_layers(path):
    if path == PACKAGE / "__init__.py":
        return  # the face re-exports
    table = layer_table()
    layer_of = {m: layer for layer, (modules, _) in table.items() for m in modules}
    mine = layer_of[top_unit(path)]
    allowed = table[mine][1]
    for unit in imported_units(path) - {top_unit(path)}:
        assert unit != "__init__", f"{path.name} imports the package face"
        assert "every layer" in allowed or layer_of[unit] in allowed | {mine}, (
            f"{path.relative_to(PACKAGE)} ({mine}) imports {unit} ({layer_of[unit]}); allowed: {sorted(allowed)}"
        )


def test_no_trainer_imports_another_and_the_engine_imports_none():
    trainers = {"loop", "excite"}
    for name in ("engine", "tasks", *trainers):
        source = ast.parse((PACKAGE / "training" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(source) if isinstance(n, ast.ImportFrom) and n.level == 1}
        forbidden = (trainers | {"compare"}) - {name}
        assert not imported & forbidden, f"training/{name}.py imports {imported & forbidden}"


def test_the_checker_sees_forbidden_imports():
    data = PACKAGE / "data" / "core.py"
    assert "training" not in imported_units(data)
    probe = "from ..training import engine\nfrom .. import __version__, runs\nimport seeking.reporting\n"
    assert imported_units(data, probe) == {"training", "__init__", "runs", "reporting"}
