"""The package layout's rules (docs/ARCHITECTURE.md), checked on the source: dependencies point one way.

Every import of our own modules, top-level or inside a function, is read from the syntax tree; modules are
collapsed to their package (``llmrec.data``, ``llmrec.tmf``, …; the modules directly in ``llmrec/`` are the
foundations). A package may import only packages on a lower floor of :data:`FLOORS`, or itself.

``llmrec/__init__.py`` is the front door (``from llmrec import Recommender``): it sits above every floor, and its
one import, of the top floor's ``Recommender``, is deferred to first use (its docstring says why).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("llmrec", "graph_encoders", "adapters")

# Lowest first. Packages on one floor do not import each other.
FLOORS: list[set[str]] = [
    {"llmrec"},  # foundations: config, io, tables, metrics, devices, cli_common
    {"adapters"},
    {"llmrec.data"},
    {"llmrec.encoders"},
    {"graph_encoders"},  # multimodal graph encoders (DreamRec, MDSRec) read the encoders' cached item tables
    {"llmrec.tmf"},
    {"llmrec.generation"},
    {"llmrec.train"},
    {"llmrec.eval"},
    {"llmrec.pipeline"},
]
FLOOR = {package: k for k, floor in enumerate(FLOORS) for package in floor}
ENTRY_POINTS = ("train.py", "infer.py", "evaluate.py")
FRONT_DOOR = REPO / "llmrec" / "__init__.py"
FRONT_DOOR_IMPORTS = ["llmrec.pipeline.recommender"]  # the only imports of our own modules it may make
# Imports that may stay inside functions: heavy optional dependencies, loaded when used.
OPTIONAL = ("vllm", "deepspeed", "bitsandbytes", "open_clip")


def package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] not in ROOTS:
        return None
    if parts[0] != "llmrec":
        return parts[0]
    return "llmrec" if len(parts) <= 2 and not (REPO / "llmrec" / parts[-1]).is_dir() else ".".join(parts[:2])


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, inside a function)`` for every import statement of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno, node.col_offset > 0))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, node.col_offset > 0) for alias in node.names]
    return found


def source_files() -> list[Path]:
    """Every module of the three packages except the front door (checked by its own test)."""
    return sorted(p for root in ROOTS for p in (REPO / root).rglob("*.py") if p != FRONT_DOOR)


def package_edges() -> dict[tuple[str, str], str]:
    """``(importer package, imported package) -> 'file:line'`` of one import making the edge."""
    edges: dict[tuple[str, str], str] = {}
    for path in source_files():
        source = package_of(module_name(path))
        for module, line, _ in imports(path):
            target = package_of(module)
            if target is not None and target != source:
                edges.setdefault((source, target), f"{path.relative_to(REPO)}:{line}")
    return edges


def test_every_package_has_a_floor():
    packages = {package_of(module_name(p)) for p in source_files()}
    assert packages <= set(FLOOR), f"packages without a floor in FLOORS: {sorted(packages - set(FLOOR))}"


def test_imports_point_down_only():
    upward = [f"{where}: {a} imports {b}" for (a, b), where in package_edges().items() if FLOOR[b] >= FLOOR[a]]
    assert not upward, "imports that do not point down:\n" + "\n".join(upward)


def test_adapters_stand_alone():
    uses = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in (REPO / "adapters").rglob("*.py")
            for m, line, _ in imports(p) if m.split(".")[0] in ("llmrec", "graph_encoders")]
    assert not uses, uses


def test_no_import_of_our_own_modules_inside_functions():
    hidden = [f"{p.relative_to(REPO)}:{line} imports {m}" for p in source_files()
              for m, line, inside in imports(p) if inside and m.split(".")[0] in ROOTS]
    assert not hidden, "function-level imports of our own modules (move them to the top):\n" + "\n".join(hidden)


def test_function_level_imports_are_optional_dependencies_with_a_comment():
    odd = []
    for path in source_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for module, line, inside in imports(path):
            if inside and module.split(".")[0] not in ROOTS:
                text = lines[line - 1] + (lines[line - 2] if line > 1 else "")
                if module.split(".")[0] not in OPTIONAL or "#" not in text:
                    odd.append(f"{path.relative_to(REPO)}:{line}: {module}")
    assert not odd, "function-level imports other than commented optional dependencies:\n" + "\n".join(odd)


def test_the_front_door_defers_its_one_import_of_the_top_floor():
    ours = [(m, inside) for m, _, inside in imports(FRONT_DOOR) if m.split(".")[0] in ROOTS]
    assert [m for m, _ in ours] == FRONT_DOOR_IMPORTS and all(inside for _, inside in ours), ours
    assert FLOOR[package_of(FRONT_DOOR_IMPORTS[0])] == len(FLOORS) - 1


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_points_are_thin(entry):
    targets = {package_of(m) for m, _, _ in imports(REPO / entry)} - {None}
    assert targets <= {"llmrec.pipeline", "llmrec.eval"}, targets


def test_os_replace_only_in_the_atomic_helper():
    users = [str(p.relative_to(REPO)) for p in source_files() if "os.replace(" in p.read_text(encoding="utf-8")]
    assert users == ["llmrec/io.py"], users
