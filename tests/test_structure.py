"""The package's shape, as docs/DESIGN.md draws it: areas in layers, imports pointing down.

Read from the source with ``ast`` (no server). The layers are read from one
place, the drawing in docs/DESIGN.md ("Areas and their one-way dependencies"):
each line is a layer, each word an area (``name/`` a folder of
``certbot_kvault/_internal``, ``name`` a module there). A module imports from
its own area and from areas on lower lines only; every import counts, also one
inside a function or under ``TYPE_CHECKING``. The checkers are shown to fail on
planted imports. Also: no import cycle, no module reaching into another's
private names, every module named in DESIGN.md's table and saying what it owns,
each area's docstring allowing what the drawing allows, nothing pointing at
files outside the repository.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "certbot_kvault"
INTERNAL = PACKAGE / "_internal"
DESIGN = ROOT / "docs" / "DESIGN.md"
PREFIX = "certbot_kvault._internal"
# Not a target: a bound that catches a module grown into several jobs. A hard cap
# near 400 lines made modules split in two only to fit it (lease.py beside
# lock.py, dir_owner.py beside export.py, a 20-line executables.py).
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module below certbot_kvault/_internal."""
    out = {}
    for path in sorted(INTERNAL.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> Optional[str]:
    """The internal module ``name`` refers to (a module, or a name inside a package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports_of(source: str, module: str) -> tuple[set[str], list[str]]:
    """(internal modules imported anywhere in ``source``, private names it takes from them)."""
    tree = ast.parse(source)
    found: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):  # every node: function bodies and `if TYPE_CHECKING:` too
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith(PREFIX):
            for alias in node.names:
                target = _resolve(f"{node.module}.{alias.name}")
                if target is not None and target != module and \
                        target == f"{node.module}.{alias.name}":
                    found.add(target)  # `from pkg import module`
                    aliases[alias.asname or alias.name] = target
                else:
                    base = _resolve(node.module)
                    if base is not None:
                        found.add(base)
                    if alias.name.startswith("_"):
                        private.append(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PREFIX):
                    target = _resolve(alias.name)
                    if target is not None:
                        found.add(target)
    for node in ast.walk(tree):
        # module._private through an imported module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in aliases and node.attr.startswith("_") \
                and not node.attr.startswith("__"):
            private.append(f"{aliases[node.value.id]}.{node.attr}")
    found.discard(module)
    # A package's __init__ is imported by its submodules' own imports; only
    # count it when the module imports it by name.
    return found, private


def _imports(module: str) -> tuple[set[str], list[str]]:
    return _imports_of(MODULES[module].read_text(encoding="utf-8"), module)


GRAPH = {m: _imports(m)[0] for m in MODULES}


# ---- the drawing ------------------------------------------------------------------------


def _section(title: str) -> str:
    """The text of DESIGN.md's section ``## title`` (up to the next ``## ``)."""
    text = DESIGN.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def _drawing() -> list[list[str]]:
    """The areas of each layer, top to bottom, from the first code block of the section."""
    block = _section("Areas and their one-way dependencies").split("```")[1]
    rows = [line.split() for line in block.splitlines()[1:] if line.strip()]
    return [[word.rstrip("/") for word in row] for row in rows]


LAYERS = _drawing()
RANK = {area: n for n, row in enumerate(LAYERS) for area in row}


def _area(module: str) -> str:
    """The area a module belongs to: its folder below _internal, or itself (plugin)."""
    return module[len(PREFIX) + 1:].split(".")[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a module from an area that is not below its own, one line each."""
    found = []
    for module, deps in sorted(graph.items()):
        if module == PREFIX:
            continue
        mine = _area(module)
        for dep in sorted(deps):
            theirs = _area(dep) if dep != PREFIX else ""
            if theirs != mine and RANK.get(theirs, -1) <= RANK[mine]:
                found.append(f"{module} ({mine}) imports {dep} ({theirs or 'the package'})")
    return found


def _below(area: str) -> set[str]:
    return {a for a, n in RANK.items() if n > RANK[area]}


def test_the_drawing_names_each_area_once() -> None:
    words = [a for row in LAYERS for a in row]
    assert len(words) == len(set(words)), words
    on_disk = {_area(m) for m in MODULES if m != PREFIX}
    assert set(words) == on_disk


def test_imports_point_down_the_layers() -> None:
    assert _upward(GRAPH) == []


# A module's imports as the checkers see them: at the top, in a function, for types only.
PLANTED = """
from typing import TYPE_CHECKING

from certbot_kvault._internal.vault.client import VaultClient
if TYPE_CHECKING:
    from certbot_kvault._internal.tree.storage import Tree

def later() -> None:
    from certbot_kvault._internal.renew import flows
"""


def test_the_layer_check_finds_a_planted_upward_import() -> None:
    records = f"{PREFIX}.store.records"
    deps = _imports_of(PLANTED, records)[0]
    assert deps == {f"{PREFIX}.vault.client", f"{PREFIX}.tree.storage",
                    f"{PREFIX}.renew.flows"}
    planted = {**GRAPH, records: GRAPH[records] | deps}
    assert _upward(planted) == [
        f"{records} (store) imports {PREFIX}.renew.flows (renew)",
        f"{records} (store) imports {PREFIX}.tree.storage (tree)",
    ]
    # Beside is not below: two areas of one layer do not import each other.
    export = f"{PREFIX}.apps.export"
    beside = {**GRAPH, export: GRAPH[export] | {f"{PREFIX}.renew.status"}}
    assert _upward(beside) == [f"{export} (apps) imports {PREFIX}.renew.status (renew)"]


def test_each_area_says_what_it_may_import() -> None:
    for area in RANK:
        module = f"{PREFIX}.{area}"
        doc = ast.get_docstring(ast.parse(MODULES[module].read_text(encoding="utf-8"))) or ""
        said = re.search(r"^May import: (.*)$", doc, re.MULTILINE)
        assert said, f"{module}: no 'May import:' line"
        allowed = set() if said.group(1).startswith("nothing") else \
            set(re.findall(r"[a-z_]+", said.group(1).split("(")[0]))
        assert allowed == _below(area), module


def test_the_package_docstring_draws_the_same_layers() -> None:
    doc = ast.get_docstring(ast.parse(MODULES[PREFIX].read_text(encoding="utf-8"))) or ""
    rows = []
    for line in doc.splitlines():
        if line.startswith("    "):  # the drawing: areas, then what they are, 2+ spaces apart
            words = re.split(r"\s{2,}", line.strip())
            rows.append([w.rstrip("/") for w in words[:-1]])
    assert rows == LAYERS


# ---- cycles -----------------------------------------------------------------------------


def _cycle(graph: dict[str, set[str]]) -> Optional[list[str]]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> Optional[list[str]]:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph[m]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    assert _cycle(GRAPH) is None, f"import cycle: {' -> '.join(_cycle(GRAPH) or [])}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    # Within one area, where the layers allow both directions.
    storage, files = f"{PREFIX}.tree.storage", f"{PREFIX}.tree.files"
    assert files in GRAPH[storage]
    planted = {**GRAPH, files: GRAPH[files] | {storage}}
    assert _cycle(planted) == [files, storage, files]
    assert _upward(planted) == []  # the layers alone would not see it


# ---- modules ----------------------------------------------------------------------------


def test_no_private_names_across_modules() -> None:
    crossing = {m: _imports(m)[1] for m in MODULES}
    assert {m: p for m, p in crossing.items() if p} == {}


def _only_a_docstring(path: Path) -> bool:
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return len(body) == 1 and isinstance(body[0], ast.Expr)


def test_design_names_every_module() -> None:
    table = _section("Areas and their one-way dependencies")
    named = set(re.findall(r"^\| `([a-z_/]+\.py)`", table, re.MULTILINE))
    files = {str(p.relative_to(INTERNAL)) for p in MODULES.values()
             if not (p.name == "__init__.py" and _only_a_docstring(p))}
    assert sorted(named - files) == [], "in DESIGN.md's table, not in the package"
    assert sorted(files - named) == [], "in the package, not in DESIGN.md's table"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_says_what_it_owns(module: str) -> None:
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    assert ast.get_docstring(ast.parse(text)), f"{path} has no docstring"
    assert len(text.splitlines()) <= MAX_LINES, f"{path}: {len(text.splitlines())} lines"


def test_nothing_points_outside_the_repository() -> None:
    pattern = re.compile(r"RIG\.md|\bthe SPEC\b|SPEC\.md|\.\./shared|STYLE\.md")
    hits = []
    for path in ROOT.rglob("*"):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(ROOT).parts):
            continue
        if path.suffix not in (".py", ".md", ".sh", ".hcl", ".yml", ".yaml", ".toml", ".txt",
                               ".cfg", "") or path == Path(__file__):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        hits += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(text.splitlines(), 1)
                 if pattern.search(line)]
    assert hits == []
