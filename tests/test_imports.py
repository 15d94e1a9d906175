"""The package's import graph, read from the source (ast): no import cycle among ffclip_jax and convert_weights
modules, and imports at the top of modules: a function-local import only of a heavy optional dependency."""
import ast
import os

from parity import ROOT

PACKAGES = ("ffclip_jax", "convert_weights")
LAZY_ALLOWED = {"torch", "dlib", "gradio", "pandas", "matplotlib"}  # optional extras or slow, each with its reason
# owned by the training branch (train/, errors.run_cli, logs): checked there
NOT_CHECKED = ("ffclip_jax/train/", "ffclip_jax/errors.py", "ffclip_jax/logs.py")


def modules():
    """{dotted name: path} of every module of the packages."""
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].split(os.sep)
                    found[".".join(rel[:-1] if rel[-1] == "__init__" else rel)] = os.path.join(folder, f)
    return found


def top_level_imports(tree):
    """Import statements outside functions (module level, also inside if/try blocks)."""
    for node in tree.body:
        for sub in ast.walk(node) if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                          ast.ClassDef)) else ():
            if isinstance(sub, (ast.Import, ast.ImportFrom)):
                yield sub


def edges(name, tree, known):
    """First-party modules `name` imports at its top (`from pkg import mod` names the module pkg.mod)."""
    out = set()
    for node in top_level_imports(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                base = ".".join(name.split(".")[:-node.level] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        out |= {t for t in targets if t in known and t != name}
    return out


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    known = modules()
    graph = {name: edges(name, ast.parse(open(path).read()), known) for name, path in known.items()}
    assert graph["ffclip_jax.pipeline"] >= {"ffclip_jax.inputs", "ffclip_jax.align", "ffclip_jax.batching"}
    assert cycles(graph) == []
    cli = {n for n in graph if n.startswith("ffclip_jax.cli")}
    library = {n for n in graph if n not in cli and n != "ffclip_jax.__main__" and n != "convert_weights.__main__"}
    assert not [(n, sorted(graph[n] & cli)) for n in library if graph[n] & cli]  # the library never imports a CLI


def test_imports_at_the_top_of_modules():
    bad = []
    for name, path in modules().items():
        rel = os.path.relpath(path, ROOT)
        if rel.startswith(NOT_CHECKED):
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.Import):
                        names = [a.name for a in sub.names]
                    elif isinstance(sub, ast.ImportFrom):
                        names = [sub.module or ""]
                    else:
                        continue
                    bad += [f"{rel}:{sub.lineno} {n}" for n in names if n.split(".")[0] not in LAZY_ALLOWED]
    assert not bad, bad
