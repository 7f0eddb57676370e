"""The package's imports run one way: every import, function-local ones included, points down the layer order.

The order is the README's (Layout): a module may import modules of its own layer or of lower ones, never of a
higher one, and no two modules import each other, directly or around a loop. Parsed from the source (``ast``),
so an import inside a function that runs only on one code path counts as much as one at the top.
"""

import ast
import pathlib

import pytest

PACKAGE = "dreamactor_jax"

# Lowest first. An entry names a module or a package (all of its modules); the longest matching entry wins, so
# ``convert.export`` sits above ``convert``. Keep this table and the README's layer list the same.
LAYERS = (
    ("foundation", ("eval", "parallel", "fs", "data.video_io", "convert.safetensors_io", "convert.fsutil")),
    ("models", ("models",)),
    ("diffusion", ("diffusion",)),
    ("weights", ("convert",)),
    ("codecs", ("codecs",)),
    ("data", ("data",)),
    ("config", ("config_lib",)),
    ("train", ("train",)),
    ("run_io", ("convert.export", "convert.importer", "convert.orbax_reader")),
    ("curriculum", ("curriculum",)),
    ("app", ("animate",)),
)


def _root() -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parents[1] / PACKAGE


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: pathlib.Path) -> dict[str, dict[str, int]]:
    """module -> {imported package module: line}, over every ``import`` statement in the module's source."""
    files = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # ``from pkg import name``: the module pkg.name when there is one, else pkg itself
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for t in targets:
                if t in files and t != mod:
                    edges.setdefault(t, node.lineno)
        graph[mod] = edges
    return graph


def layer_of(module: str) -> int:
    """Index in ``LAYERS`` of a package module (the longest matching entry); ValueError when none matches."""
    name = module.removeprefix(PACKAGE).removeprefix(".")
    best, rank = None, -1
    for i, (_, entries) in enumerate(LAYERS):
        for e in entries:
            if (name == e or name.startswith(e + ".")) and len(e) > rank:
                best, rank = i, len(e)
    if best is None:
        raise ValueError(f"{module} is in no layer of tests/test_layers.py LAYERS: add it (and to the README)")
    return best


def upward_imports(graph: dict[str, dict[str, int]]) -> list[str]:
    out = []
    for mod, edges in graph.items():
        if mod == PACKAGE:
            continue
        for t, line in edges.items():
            if t != PACKAGE and layer_of(t) > layer_of(mod):
                out.append(f"{mod}:{line} imports {t} ({LAYERS[layer_of(mod)][0]} -> {LAYERS[layer_of(t)][0]})")
    return out


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The import loops: strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
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

    for v in graph:
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph():
    return import_graph(_root())


def test_every_module_has_a_layer(graph):
    for mod in graph:
        if mod != PACKAGE:
            layer_of(mod)


def test_imports_point_down_the_layers(graph):
    bad = upward_imports(graph)
    order = " < ".join(name for name, _ in LAYERS)
    assert not bad, f"imports against the layer order ({order}):\n" + "\n".join(bad)


def test_no_import_cycles(graph):
    assert not cycles(graph), cycles(graph)


def test_the_checks_see_function_local_imports(tmp_path):
    """A lazy upward import (the kind that hid the old cycles) and a loop are both reported."""
    pkg = tmp_path / PACKAGE
    for sub in ("models", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "transformer.py").write_text("def f():\n    from dreamactor_jax.train import loop\n")
    (pkg / "train" / "loop.py").write_text("from dreamactor_jax.models import transformer\n")
    g = import_graph(pkg)
    assert upward_imports(g) == ["dreamactor_jax.models.transformer:2 imports dreamactor_jax.train.loop "
                                 "(models -> train)"]
    assert cycles(g) == [["dreamactor_jax.models.transformer", "dreamactor_jax.train.loop"]]


def test_readme_lists_the_layers():
    readme = (_root().parent / "README.md").read_text()
    assert " < ".join(f"`{name}`" for name, _ in LAYERS) in readme
