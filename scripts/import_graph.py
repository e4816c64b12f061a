"""The project's import graph, checked against its layers: ``python scripts/import_graph.py [ROOT]``.

Every import counts: module level, inside functions (a lazy import hides a cycle, it does not
remove it) and under ``TYPE_CHECKING``. Prints the arrows between packages, then any

* **upward arrow** -- a layer importing one above it. Top to bottom: ``app.py`` and ``bench/``,
  ``switchboard/`` (the doors and the composition root), ``graphs/``, ``agents/``,
  ``knowledge/``, ``tools/``; nothing but ``tests/`` imports ``tests/``;
* **circle** -- modules that import each other, directly or round a loop, and the same between
  the subpackages of ``tools/``.

Exits 1 when there is either (``tests/unit/test_architecture.py`` runs it), 0 otherwise. ROOT
defaults to this checkout; pass another (a ``git worktree`` of an older commit) to compare.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGES = ("switchboard", "graphs", "agents", "knowledge", "tools")
LAYERS = {"app": 6, "bench": 6, "switchboard": 5, "graphs": 4, "agents": 3, "knowledge": 2, "tools": 1}
SKIP = {".venv", "out", "node_modules", "__pycache__", ".git", ".switchboard", "test-artifacts"}


def modules(root: Path) -> dict[str, Path]:
    found = {"app": root / "app.py"} if (root / "app.py").exists() else {}
    for top in (*PACKAGES, "bench", "tests"):
        for path in sorted((root / top).rglob("*.py")):
            if SKIP & set(path.relative_to(root).parts):
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import mod`` resolves to the module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer(module: str) -> str:
    return module.split(".")[0]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def tools_package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def check(root: Path) -> tuple[dict[str, set[str]], list[str], list[list[str]], list[list[str]]]:
    known = modules(root)
    graph = {name: imports(path, name, known) for name, path in known.items()}
    upward = []
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            a, b = layer(src), layer(dst)
            if a == "tests":
                continue
            if b == "tests" or (a in LAYERS and b in LAYERS and LAYERS[b] > LAYERS[a]):
                upward.append(f"{src} -> {dst}")
    project = {k: {t for t in v if layer(t) != "tests"} for k, v in graph.items() if layer(k) != "tests"}
    tools = defaultdict(set)
    for src, targets in project.items():
        if layer(src) == "tools":
            tools[tools_package(src)] |= {tools_package(t) for t in targets if layer(t) == "tools"} - {tools_package(src)}
    return graph, upward, cycles(project), cycles(dict(tools))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    graph, upward, module_cycles, tools_cycles = check(args.root.resolve())
    arrows: dict[tuple[str, str], int] = defaultdict(int)
    for src, targets in graph.items():
        for dst in targets:
            if layer(src) != layer(dst):
                arrows[(layer(src), layer(dst))] += 1
    print(f"{len(graph)} modules; arrows between packages (imports):")
    for (a, b), n in sorted(arrows.items()):
        print(f"  {a:>11} -> {b:<11} {n:>4}")
    print(f"upward arrows: {len(upward)}")
    for line in upward:
        print(f"  {line}")
    print(f"import circles between modules: {len(module_cycles)}")
    for c in module_cycles:
        print("  " + " <-> ".join(c))
    print(f"import circles between tools/ subpackages: {len(tools_cycles)}")
    for c in tools_cycles:
        print("  " + " <-> ".join(c))
    return 1 if upward or module_cycles or tools_cycles else 0


if __name__ == "__main__":
    sys.exit(main())
