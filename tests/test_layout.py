"""The package keeps its architecture (docs/architecture.md): layers import only downwards, no
import cycles, the runner is the only code that attaches hooks, and modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "icl_circuits"
LAYERS = ["core", "toy", "methods", "viz", "report", "cli"]  # each may import only the ones before it
MAX_LINES = 450  # "about 400": a module past it holds two ideas


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("icl_circuits"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("icl_circuits")}
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_layers_import_only_downwards():
    mods = _modules()
    bad = []
    for name, path in mods.items():
        here = _layer(name)
        if here is None:
            continue
        for dep in _imports(path, top_level_only=False):
            there = _layer(dep)
            if there is not None and LAYERS.index(there) > LAYERS.index(here) and not (here == "toy" and there == "core"):
                bad.append(f"{name} imports {dep}")
    assert bad == [], "\n".join(bad)


def test_no_import_cycles():
    mods = _modules()
    graph = {n: {d for d in _imports(p, top_level_only=True) if d in mods and d != n} for n, p in mods.items()}
    # a package's __init__ importing its own submodules is not a cycle of ideas
    graph = {n: {d for d in ds if not d.startswith(n + ".")} for n, ds in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in graph[n]:
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]) if d in stack else f"{n} -> {d}")
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert cycles == [], "\n".join(cycles)


def test_only_the_runner_attaches_hooks_or_runs_hooked_forwards():
    offenders = []
    for name, path in _modules().items():
        if name.startswith("icl_circuits.core.runner"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("hooks", "run_with_hooks", "add_hook", "reset_hooks"):
                if isinstance(node.ctx, ast.Load) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    offenders.append(f"{name}:{node.lineno} .{node.attr}")
    assert offenders == [], "\n".join(offenders)


def test_modules_stay_small():
    big = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert {n: k for n, k in big.items() if k > MAX_LINES} == {}
