"""The package keeps its plan: the import rules of docs/design.md's table, no import circle, small functions
and modules, and `charlm-jax --help` without JAX."""

import ast
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "charlm_jax"
MAX_FUNCTION_LINES, MAX_PARAMETERS, MAX_MODULE_LINES = 80, 8, 450


def allowed_imports() -> dict[str, set[str]]:
    """package -> the packages it may import, read from the plan's table in docs/design.md."""
    table = (ROOT / "docs" / "design.md").read_text(encoding="utf-8").split("## The plan", 1)[1]
    rules = {}
    for match in re.finditer(r"^\| `(\w+)` \|.*\| ([^|]+) \|$", table, re.M):
        allowed = match.group(2).strip()
        rules[match.group(1)] = {"*"} if allowed == "any" else set(re.findall(r"`(\w+)`", allowed))
    return rules


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_of(module: str) -> str | None:
    """``charlm_jax.use.lm`` -> ``use``; the top-level package itself -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """The charlm_jax modules ``path`` imports (``from charlm_jax.x import y`` names ``charlm_jax.x.y`` when
    that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("charlm_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("charlm_jax"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                submodule = ROOT.joinpath(*candidate.split("."))
                is_module = submodule.with_suffix(".py").exists() or (submodule / "__init__.py").exists()
                found.add(candidate if is_module else node.module)
    return found


def test_the_table_names_every_package():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} | {"errors"}
    assert set(allowed_imports()) == packages


def test_every_package_says_what_it_holds_and_may_import():
    for init in PACKAGE.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "import" in doc.lower(), init


def test_no_import_breaks_the_plan():
    rules = allowed_imports()
    broken = []
    for path in modules():
        own = package_of(module_name(path))
        if own is None:
            continue  # charlm_jax/__init__.py re-exports the public API from anywhere
        for target in imported_modules(path):
            other = package_of(target)
            if other not in (None, own) and "*" not in rules[own] and other not in rules[own]:
                broken.append(f"{module_name(path)} imports {target} ({own} may import {sorted(rules[own])})")
    assert not broken, "\n".join(broken)


def test_no_import_circle_between_modules():
    """Module-level imports only (a function-level import runs late, after both modules exist)."""
    graph = defaultdict(set)
    for path in modules():
        graph[module_name(path)] = {m for m in imported_modules(path, top_level_only=True)}
    state: dict[str, int] = {}

    def visit(node, trail):
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join([*trail[trail.index(nxt) :], nxt]))
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in list(graph):
        if node not in state:
            visit(node, [node])


def test_functions_and_modules_stay_small():
    too_big = []
    for path in modules():
        source = path.read_text(encoding="utf-8")
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_big.append(f"{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            count = len(names) + bool(args.vararg) + bool(args.kwarg) - (names[:1] in (["self"], ["cls"]))
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES or count > MAX_PARAMETERS:
                too_big.append(f"{module_name(path)}.{node.name}: {length} lines, {count} parameters")
    assert not too_big, "\n".join(too_big)


@pytest.mark.parametrize("module", ["charlm_jax.cli.flags", "charlm_jax.settings.config", "charlm_jax"])
def test_help_and_settings_start_no_jax(module):
    """`charlm-jax --help` builds the parser from the settings: neither may import JAX (a fresh process)."""
    code = f"import sys, {module}\nfrom charlm_jax.cli.flags import build_parser\nbuild_parser()\nprint('jax' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
