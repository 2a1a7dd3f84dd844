"""The package's shape, as docs/DESIGN.md describes it: imports point down only.

Read from the source with ``ast`` (no server): every import counts, also one
inside a function; no module reaches into another module's private names;
every module says what it owns and stays small; nothing points at files
outside the repository.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "certbot_kvault"
PREFIX = "certbot_kvault._internal"
MAX_LINES = 700  # a god-module guard, not a target (see test_module_says_what_it_owns)


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module below certbot_kvault/_internal."""
    out = {}
    for path in sorted((PACKAGE / "_internal").rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The internal module ``name`` refers to (a module, or a name inside a package)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str) -> tuple[set[str], list[str]]:
    """(internal modules imported anywhere in ``module``, private names it takes from them)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found: set[str] = set()
    private: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
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


GRAPH = {m: _imports(m)[0] for m in MODULES}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(GRAPH[m]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_cycle() -> None:
    assert _cycle() is None, f"import cycle: {' -> '.join(_cycle() or [])}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    # Guard against a checker that can never fail: plant a cycle and look for it.
    saved = dict(GRAPH)
    try:
        GRAPH[f"{PREFIX}.vault.client"] = GRAPH[f"{PREFIX}.vault.client"] | {f"{PREFIX}.sync.push"}
        assert _cycle() is not None
    finally:
        GRAPH.clear()
        GRAPH.update(saved)


def test_no_private_names_across_modules() -> None:
    crossing = {m: _imports(m)[1] for m in MODULES}
    assert {m: p for m, p in crossing.items() if p} == {}


def test_low_modules_import_nothing_above_them() -> None:
    lowest = ("vault.settings", "vault.errors", "vault.redact", "tree.files", "store.timefmt")
    for name in lowest:
        assert GRAPH[f"{PREFIX}.{name}"] <= {f"{PREFIX}.{n}" for n in lowest}, name
    # The Vault connection knows nothing of certbot's tree, records or flows.
    vault_side = {f"{PREFIX}.vault.{n}" for n in ("settings", "errors", "redact", "session",
                                                  "auth")}
    assert GRAPH[f"{PREFIX}.vault.client"] <= vault_side
    # Nothing below the CLI and the plugin imports them.
    top = {m for m in MODULES if m.startswith(f"{PREFIX}.cli") or m == f"{PREFIX}.plugin"}
    for m in set(MODULES) - top:
        assert not GRAPH[m] & top, m


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_says_what_it_owns_and_stays_small(module: str) -> None:
    path = MODULES[module]
    text = path.read_text(encoding="utf-8")
    if module == PREFIX:
        return  # the _internal package marker
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
