"""Import layering: no cycle between the modules of casc_jax and multitask_jax, the layer contract (core,
the CASC and multi-task systems, tools), the shared core never imports the multi-task system, and configs are
data (loading one loads no jax).

Imports are read with `ast` (nothing is executed); imports inside functions count too, since a lazy
import only hides a cycle.
"""

import ast
import os
import pathlib
import pkgutil
import subprocess
import sys

import casc_jax
import multitask_jax

PACKAGES = (casc_jax, multitask_jax)


def _modules() -> dict[str, str]:
    """Module name -> source file, for every module of PACKAGES."""
    found = {}
    for pkg in PACKAGES:
        found[pkg.__name__] = pkg.__file__
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            spec = info.module_finder.find_spec(info.name)
            if spec is not None and spec.origin and spec.origin.endswith(".py"):
                found[info.name] = spec.origin
    return found


def _resolve(name: str, known) -> str | None:
    """The longest known module that `name` is or lies in (`a.b.func` -> `a.b`)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: str, known) -> set[str]:
    """Known modules imported by `module` (absolute and relative imports, at any depth)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if os.path.basename(path) == "__init__.py" else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    resolved = {_resolve(t, known) for t in targets}
    return {m for m in resolved if m and m != module and not module.startswith(m + ".")}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, path, modules) for m, path in modules.items()}


def find_cycle(graph) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (iterative DFS, colours white/grey/black)."""
    state, parent = {}, {}
    for root in sorted(graph):
        if root in state:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        state[root] = "grey"
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = "black"
                stack.pop()
            elif state.get(child) == "grey":
                path = [node]
                while path[-1] != child:
                    path.append(parent[path[-1]])
                return path[::-1] + [child]
            elif child not in state:
                state[child], parent[child] = "grey", node
                stack.append((child, iter(sorted(graph.get(child, ())))))
    return None


def test_find_cycle_reports_the_loop():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_every_module_is_found():
    graph = import_graph()
    assert "casc_jax.train.loop" in graph and "multitask_jax.train" in graph
    assert "casc_jax.train.checkpoint" in graph["casc_jax.train.loop"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_casc_jax_never_imports_multitask_jax():
    """multitask_jax builds on casc_jax's shared machinery, never the other way."""
    upward = sorted((m, d) for m, deps in import_graph().items() if m.startswith("casc_jax")
                    for d in deps if d.startswith("multitask_jax"))
    assert not upward, upward


# The layers: the shared core (casc_jax's top level: diffusion, nn, channel, metrics, train toolkit, data,
# evaluation, the System interface and driver), the two systems on it, and the tools over everything.
LAYERS = (
    ("tools", ("casc_jax.tools", "multitask_jax.tools")),
    ("casc", ("casc_jax.casc",)),
    ("multitask", ("multitask_jax",)),
    ("core", ("casc_jax",)),
)
MAY_IMPORT = {"core": {"core"}, "casc": {"core", "casc"}, "multitask": {"core", "multitask"},
              "tools": {"core", "casc", "multitask", "tools"}}
# Named exceptions: the multi-task DeepJSCC baseline reuses the CASC paper's DeepJSCC layers (one model).
REUSED = {("multitask_jax.baselines.deepjscc", "casc_jax.casc.baselines.deepjscc")}


def layer_of(module: str) -> str:
    return next(name for name, prefixes in LAYERS if any(module == p or module.startswith(p + ".") for p in prefixes))


def test_layer_contract():
    """The core imports only the core, each system the core and itself, and only the tools import tools."""
    assert layer_of("casc_jax.diffusion.samplers") == "core" and layer_of("casc_jax.casc.system") == "casc"
    assert layer_of("multitask_jax.tools.reproduce") == "tools" and layer_of("multitask_jax.dit") == "multitask"
    graph = import_graph()
    assert {layer_of(m) for m in graph} == set(MAY_IMPORT)
    crossing = sorted((m, d) for m, deps in graph.items() for d in deps
                      if layer_of(d) not in MAY_IMPORT[layer_of(m)] and (m, d) not in REUSED)
    assert not crossing, crossing
    edges = {(m, d) for m, deps in graph.items() for d in deps}
    assert REUSED.issubset(edges)  # the exception is still needed


def test_loading_any_config_loads_no_model_code():
    """Configs are data: every configs/*.py imports without jax, flax or optax (only ml_collections, the
    standard library and the pure name/arithmetic modules multitask_jax.tasks and .channel_budget)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    names = sorted(p.stem for p in (root / "configs").glob("*.py") if p.stem != "__init__")
    assert {"casc_cr48", "multitask_base", "multitask_models_base", "mt_baselines_base"} <= set(names)
    probe = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    config = importlib.import_module('configs.' + name)\n"
        "    if hasattr(config, 'get_config'):\n"
        "        config.get_config('')\n"
        "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax', 'tensorflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
