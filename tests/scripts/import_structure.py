"""The import structure of src/netuq, read with ``ast`` (nothing is imported).

Reports, for ``tests/test_import_structure.py`` and for a maintainer (``python
tests/scripts/import_structure.py``):

* **circles**: strongly connected groups of modules importing each other (every import counts,
  also one inside a function; ``if TYPE_CHECKING:`` blocks do not run and are skipped);
* **upward imports**: an import against :data:`LAYERS`, the order of netuq's parts from the bottom
  (a part may import its own layer and the layers below);
* **private names crossing packages**: ``from a.b._c import x`` or ``from a.b import _x`` where
  ``a.b`` is not the importer's own package — shared private helpers live at the root
  (``netuq._checks``, ``netuq._batching``, ...), which every package may use;
* **private fields of Prediction** read or written outside ``prediction.py`` (``obj._log_sum``):
  other modules use ``Prediction.from_statistics`` / ``Prediction.statistics()``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
ROOT = "netuq"

#: netuq's parts from the bottom; each part may import its own layer and the ones below.
LAYERS = (
    ("exceptions", "_version", "_checks", "_files", "_random", "_modes", "_batching", "_batch", "_layout", "_memory",
     "_outputs", "_trace", "measures", "scores", "traits", "prediction"),
    ("metrics", "io", "nn", "models", "training", "data", "calibration", "detectors"),
    ("tta",),
    ("methods",),
    ("distributed", "results"),
    ("engine",),
    ("report",),
    ("conformal",),  # its result section renders report blocks; compare reaches it through the registry only
    ("benchmark",),
    ("cli",),
    ("", "__main__"),  # netuq/__init__.py, netuq/__main__.py
)


def modules(src: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under src/netuq."""
    out = {}
    for path in sorted((src / ROOT).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _package(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _skip_type_checking(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    nodes, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        nodes.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return nodes


def imports(mods: dict[str, Path]) -> list[tuple[str, str, tuple[str, ...], int]]:
    """``(importer, imported module, names taken from it, line)`` for every netuq-internal import."""
    out = []
    for mod, path in mods.items():
        pkg = _package(mod, path)
        for node in _skip_type_checking(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == ROOT:
                        out.append((mod, _existing(alias.name, mods), (), node.lineno))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != ROOT:
                    continue
                names = tuple(a.name for a in node.names)
                # `from pkg import submodule` imports the submodule
                subs = [n for n in names if f"{target}.{n}" in mods]
                for n in subs:
                    out.append((mod, f"{target}.{n}", (), node.lineno))
                rest = tuple(n for n in names if n not in subs)
                if rest or not subs:
                    out.append((mod, _existing(target, mods), rest, node.lineno))
    return out


def _existing(name: str, mods: dict[str, Path]) -> str:
    while name not in mods and "." in name:
        name = name.rpartition(".")[0]
    return name


def circles(edges, mods) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for a, b, _, _ in edges:
        if a != b:
            graph[a].add(b)
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def part(module: str) -> str:
    """The part of netuq a module belongs to (``netuq.engine.compare`` -> ``engine``)."""
    rest = module.split(".")[1:]
    return rest[0] if rest else ""


def layer(module: str) -> int:
    p = part(module)
    for i, names in enumerate(LAYERS):
        if p in names:
            return i
    raise KeyError(f"{module}: part {p!r} is in no layer of LAYERS; add it")


def upward(edges) -> list[str]:
    out = []
    for a, b, _, line in edges:
        if part(a) != part(b) and layer(b) > layer(a):
            out.append(f"{a}:{line} imports {b} ({part(b)!r} is above {part(a) or 'netuq'!r})")
    return out


def _private_module(name: str) -> str | None:
    """The package that owns a private module in ``name`` (None: no private component)."""
    parts = name.split(".")
    for i, p in enumerate(parts[1:], 1):
        if p.startswith("_") and not p.startswith("__"):
            return ".".join(parts[:i])
    return None


def private_crossings(edges, mods) -> list[str]:
    out = []
    for a, b, names, line in edges:
        own_pkg = _package(a, mods[a])
        owner = _private_module(b)
        if owner is not None and owner != ROOT and not (own_pkg == owner or own_pkg.startswith(owner + ".")):
            out.append(f"{a}:{line} imports the private module {b} of {owner}")
        b_pkg = _package(b, mods[b])
        crossing = not (own_pkg == b_pkg or own_pkg.startswith(b_pkg + ".") or b_pkg.startswith(own_pkg + ".")
                        or (b_pkg == ROOT and _private_module(b) == ROOT))
        for n in names:
            if n.startswith("_") and not n.startswith("__") and crossing:
                out.append(f"{a}:{line} imports the private name {n} from {b}")
    return out


def prediction_fields(mods) -> set[str]:
    """Private attributes Prediction sets on itself."""
    tree = ast.parse(mods[f"{ROOT}.prediction"].read_text(encoding="utf-8"))
    fields = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self" \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            fields.add(node.attr)
    return fields


def prediction_field_access(mods) -> list[str]:
    fields = prediction_fields(mods) - {"_require"}
    out = []
    for mod, path in mods.items():
        if mod == f"{ROOT}.prediction":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in fields and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                out.append(f"{mod}:{node.lineno} touches Prediction's private field {node.attr}")
    return out


def report(src: Path = SRC) -> dict[str, list]:
    mods = modules(src)
    edges = imports(mods)
    return {"circles": circles(edges, mods), "upward": upward(edges), "private": private_crossings(edges, mods),
            "prediction_fields": prediction_field_access(mods)}


if __name__ == "__main__":
    found = report()
    for key, items in found.items():
        print(f"{key}: {len(items)}")
        for item in items:
            print("  ", item)
    sys.exit(1 if any(found.values()) else 0)
