"""The package's imports, read with ast (nothing is imported): imports only run downhill.

Fails on an import cycle among the modules of minivae/ and kernels/ (in-function imports
count: they hide a cycle, they do not remove it), on a library module that imports click
(option parsing lives in cli.py), on torch anywhere, and on an import inside a function
unless it is of an optional dependency, loaded only where it is used.
"""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("minivae", "kernels")
# Imported inside functions on purpose, where they are used, so that minivae loads without them:
# cupy (the gpu extra), numba.cuda (CUDA kernels), matplotlib (the plot extra), dask and
# distributed (reached only through minivae.cluster, which stages loads for --workers), and the
# readers of `minivae import`: safetensors (its ImportError is a one-line message) and tomllib
# (in the standard library from Python 3.11 only).
OPTIONAL = ("cupy", "numba.cuda", "matplotlib", "dask", "distributed", "minivae.cluster",
            "safetensors", "tomllib")


def modules():
    """{dotted name: path} of every module of the packages."""
    found = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = modules()


def imports(name, path):
    """[(target, line, inside a function)] for every import statement of module `name`; a
    relative import is resolved, `from P import m` names the module P.m where that exists."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, inner) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")
                    up = up[:len(up) - child.level + 1]
                    base = ".".join(up + ([child.module] if child.module else []))
                for a in child.names:       # `from P import m`: the module P.m where there is one
                    full = f"{base}.{a.name}"
                    ours = base.split(".")[0] in PACKAGES
                    out.append((base if ours and full not in MODULES else full, child.lineno, inner))
            visit(child, inner)

    visit(tree, False)
    return out


IMPORTS = {name: imports(name, path) for name, path in MODULES.items()}


def graph():
    """{module: set of package modules it imports}, anywhere in its file."""
    g = {}
    for name, found in IMPORTS.items():
        g[name] = {t for t, _, _ in found if t in MODULES and t != name}
    return g


def cycles(g):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            strong(v)
    return comps


def test_the_walk_sees_the_package():
    assert "minivae.model.model" in MODULES and "kernels.elu" in MODULES
    assert "minivae.backend" in graph()["minivae.model.nn"]


def test_kernels_import_nothing_of_the_library_above_them():
    found = [f"{name}:{line} imports {target}" for name, rows in IMPORTS.items() if name.startswith("kernels")
             for target, line, _ in rows if target.split(".")[0] == "minivae"]
    assert found == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def is_optional(target):
    return any(target == o or target.startswith(o + ".") for o in OPTIONAL)


def test_in_function_imports_are_optional_dependencies_only():
    found = [f"{name}:{line} imports {target}" for name, rows in IMPORTS.items()
             for target, line, inner in rows if inner and not is_optional(target)]
    assert found == []


def test_no_library_module_imports_click_or_torch():
    found = [f"{name}:{line} imports {target}" for name, rows in IMPORTS.items()
             for target, line, _ in rows if target.split(".")[0] in ("click", "torch")]
    assert found == []
