"""The package keeps its architecture (docs/architecture.md): layers import only downwards, no
import cycles, no private name crosses a module, the runner is the only code that attaches hooks,
and modules stay small.

Every import counts, wherever it is written: at the top of a module, inside a function or method,
under ``if TYPE_CHECKING:`` or in a ``try``. A function-level import defers the work, it does not
change which module depends on which; a cycle hidden in a function is still a cycle. Imports of
other packages (an optional heavy dependency imported where it is used) are not concerned: only
``icl_circuits`` modules make edges.

The checks take the package's directory, so the tests at the end can show that each one fails on a
small package built to break it.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "icl_circuits"
LAYERS = ["core", "toy", "methods", "viz", "grid", "report", "teach", "explorer", "cli"]  # each may import only the ones before it
MAX_LINES = 450  # "about 400": a module past it holds two ideas


# ----------------------------------------------------------------------------- reading imports
@dataclass(frozen=True)
class Import:
    """One imported name: ``module`` is the icl_circuits module it comes from (a package's re-export
    resolved to the module that defines it), ``name`` the name taken (None for a whole module)."""

    importer: str
    module: str
    name: str | None
    line: int
    where: str  # "" at the top of the module, "in a function", or "in a block" (``if TYPE_CHECKING:``, ``try``, a class)


def _modules(pkg: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (``a/__init__.py`` is ``a``)."""
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _raw_imports(name: str, path: Path, mods: dict[str, Path], root: str) -> list[tuple[str, str | None, int, str]]:
    """(module, name or None, line, where) for every import of a ``root`` module in one file, at any depth."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                   for n in ast.walk(f)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        where = "" if id(node) in top else "in a function" if id(node) in in_function else "in a block"
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno, where) for a in node.names if a.name.split(".")[0] == root]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x, from ..a import b
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != root:
                continue
            for a in node.names:
                sub = f"{module}.{a.name}"
                out.append((sub, None, node.lineno, where) if sub in mods else (module, a.name, node.lineno, where))
    return out


def imports(pkg: Path = PKG) -> list[Import]:
    """Every import of a package module by a package module, with re-exports resolved: ``from
    icl_circuits.core.runner import final_logits`` is an import of ``core.runner.forward``, where
    ``runner/__init__.py`` takes ``final_logits`` from."""
    mods = _modules(pkg)
    raw = {n: _raw_imports(n, p, mods, pkg.name) for n, p in mods.items()}
    reexports = {n: {nm: m for m, nm, _, where in raw[n] if nm is not None and not where}
                 for n, p in mods.items() if p.name == "__init__.py"}

    def resolve(module: str, name: str | None) -> tuple[str, str | None]:
        seen = set()
        while name is not None and name in reexports.get(module, {}) and (module, name) not in seen:
            seen.add((module, name))
            module = reexports[module][name]
        return module, name

    return [Import(n, *resolve(m, nm), line, where) for n, rows in raw.items() for m, nm, line, where in rows]


def _graph(pkg: Path) -> dict[str, set[str]]:
    """module -> the package modules it imports (a package's ``__init__`` importing its own
    submodules is the package's table of contents, not a dependency)."""
    mods = _modules(pkg)
    graph: dict[str, set[str]] = {n: set() for n in mods}
    for imp in imports(pkg):
        if imp.module in mods and imp.module != imp.importer and not imp.module.startswith(imp.importer + "."):
            graph[imp.importer].add(imp.module)
    return graph


# ----------------------------------------------------------------------------- the checks
def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def upward_imports(pkg: Path = PKG) -> list[str]:
    """Imports from a higher layer (``LAYERS``), at any depth."""
    bad = []
    for imp in imports(pkg):
        here, there = _layer(imp.importer), _layer(imp.module)
        if here is not None and there is not None and LAYERS.index(there) > LAYERS.index(here):
            where = f"{imp.where} " if imp.where else ""
            bad.append(f"{imp.importer}:{imp.line} imports {imp.module} {where}({there} is above {here})")
    return sorted(set(bad))


def import_cycles(pkg: Path = PKG) -> list[str]:
    """Every strongly connected group of modules (each imports the others, directly or not), with
    the imports that close it; counted over imports at any depth."""
    graph = _graph(pkg)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    lines = {}
    for imp in imports(pkg):
        lines.setdefault((imp.importer, imp.module), []).append(f"{imp.line}{f' ({imp.where})' if imp.where else ''}")
    out = []
    for g in sorted(groups):
        edges = [f"{a}:{', '.join(lines[(a, b)])} -> {b}" for a in g for b in sorted(graph[a]) if b in g]
        out.append("cycle of " + ", ".join(g) + ":\n    " + "\n    ".join(edges))
    return out


def private_imports(pkg: Path = PKG) -> list[str]:
    """Private names (``_x``, not ``__x__``) taken from another module: imported by name, or read as
    an attribute of an imported package module. A private *module* (``viz/_style.py``) belongs to its
    package: its siblings may import it, nothing outside may."""
    mods = _modules(pkg)
    bad = []
    for imp in imports(pkg):
        parts = imp.module.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])
            if _is_private(part) and not (imp.importer == owner or imp.importer.startswith(owner + ".")):
                bad.append(f"{imp.importer}:{imp.line} imports the private module {'.'.join(parts[: i + 1])}")
        if imp.name is not None and _is_private(imp.name) and imp.module != imp.importer:
            bad.append(f"{imp.importer}:{imp.line} imports {imp.module}.{imp.name}")
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        aliases = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name in mods and a.asname:
                        aliases[a.asname] = a.name
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if f"{node.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and _is_private(node.attr) and aliases[node.value.id] != name):
                bad.append(f"{name}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return sorted(set(bad))


def hook_attachers(pkg: Path = PKG) -> list[str]:
    """Code outside ``core/runner`` that attaches hooks or runs a hooked forward."""
    offenders = []
    for name, path in _modules(pkg).items():
        if name.startswith(f"{pkg.name}.core.runner"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("hooks", "run_with_hooks", "add_hook", "reset_hooks"):
                if isinstance(node.ctx, ast.Load) and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    offenders.append(f"{name}:{node.lineno} .{node.attr}")
    return offenders


# ----------------------------------------------------------------------------- the package keeps them
def test_layers_import_only_downwards():
    """core < toy < methods < viz < report < cli, imports inside functions included."""
    bad = upward_imports()
    assert bad == [], "\n".join(bad)


def test_no_import_cycles():
    """No group of modules imports itself round, through imports at any depth."""
    cycles = import_cycles()
    assert cycles == [], "\n".join(cycles)


def test_no_private_name_crosses_a_module():
    bad = private_imports()
    assert bad == [], "\n".join(bad)


def test_only_the_runner_attaches_hooks_or_runs_hooked_forwards():
    offenders = hook_attachers()
    assert offenders == [], "\n".join(offenders)


def test_modules_stay_small():
    big = {n: len(p.read_text().splitlines()) for n, p in _modules(PKG).items()}
    assert {n: k for n, k in big.items() if k > MAX_LINES} == {}


# ----------------------------------------------------------------------------- the checks catch what they are for
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    pkg = tmp_path / "icl_circuits"
    for rel, text in {"__init__.py": "", "core/__init__.py": "", "methods/__init__.py": "", **files}.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def test_a_cycle_hidden_in_a_function_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "core/a.py": "from icl_circuits.core.b import g\n\ndef f():\n    return g()\n",
        "core/b.py": "def g():\n    from icl_circuits.core.a import f  # deferred, still a cycle\n    return f\n",
        "core/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from icl_circuits.core.d import D\n",
        "core/d.py": "from icl_circuits.core import c\n",
    })
    cycles = import_cycles(pkg)
    assert len(cycles) == 2, cycles
    assert "icl_circuits.core.a, icl_circuits.core.b" in cycles[0] and "(in a function)" in cycles[0]
    assert "icl_circuits.core.c, icl_circuits.core.d" in cycles[1] and "(in a block)" in cycles[1]


def test_a_cycle_through_a_reexport_is_found_and_a_table_of_contents_is_not_one(tmp_path):
    pkg = _package(tmp_path, {
        "core/runner/__init__.py": "from icl_circuits.core.runner.forward import run\n",
        "core/runner/forward.py": "def run():\n    from icl_circuits.core.spec import S\n",
        "core/spec.py": "def s():\n    from icl_circuits.core.runner import run  # forward.run, through the re-export\n",
    })
    assert len(import_cycles(pkg)) == 1
    (pkg / "core/spec.py").write_text("S = 1\n")
    assert import_cycles(pkg) == []  # runner/__init__ importing its own submodule is no cycle


def test_an_upward_import_in_a_function_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "core/a.py": "def f():\n    from icl_circuits.methods.m import g\n    return g\n",
        "methods/m.py": "from icl_circuits.core.a import f\n\ndef g():\n    return f\n",
    })
    assert upward_imports(pkg) == ["icl_circuits.core.a:2 imports icl_circuits.methods.m in a function (methods is above core)"]


def test_a_private_import_across_modules_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "core/a.py": "def _helper():\n    return 1\n",
        "core/b.py": "def f():\n    from icl_circuits.core.a import _helper\n    return _helper()\n",
        "core/c.py": "from icl_circuits.core import a\n\ndef f():\n    return a._helper()\n",
        "core/d.py": "import icl_circuits.core.a as mod\nfrom icl_circuits.core.a import __doc__\n\nx = mod.__name__\n",
        "viz/__init__.py": "",
        "viz/_style.py": "PALETTE = []\n",
        "viz/fig.py": "from icl_circuits.viz import _style\n",  # a private module used by its own package
        "methods/m.py": "from icl_circuits.viz._style import PALETTE\n",
    })
    assert private_imports(pkg) == [
        "icl_circuits.core.b:2 imports icl_circuits.core.a._helper",
        "icl_circuits.core.c:4 reads icl_circuits.core.a._helper",
        "icl_circuits.methods.m:1 imports the private module icl_circuits.viz._style",
    ]
