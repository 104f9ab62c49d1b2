"""The package's layer order: every import (module-level or inside a function) points down, never
up or sideways into another package of the same layer, and no two modules import each other in a
cycle. The model code (space/) imports no optimizer, checkpoint or config library."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'asose_jax'
# lowest first; a module may import its own package and any package of a lower layer
LAYERS = {'space': 0, 'data': 0, 'report': 1, 'benchmarks': 1, 'search': 1, 'growth': 2, 'run': 3,
          'train': 4, 'evaluate': 4, 'sweep': 4}
MODEL_FORBIDDEN = ('optax', 'orbax', 'ml_collections', 'absl', 'tensorflow_datasets')


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imports(path: pathlib.Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (lazy imports count)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f'{node.module}.{a.name}' for a in node.names}  # `from pkg import module`
    return found


def package_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob('*.py')}
    return {m: {i for i in imports(p) if i in modules and i != m} for m, p in modules.items()}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for each import of a package that is not below the importer's (nor its own)."""
    bad = []
    for importer, targets in graph.items():
        if importer == 'asose_jax':
            continue
        own = importer.split('.')[1]
        for target in targets:
            if target == 'asose_jax':
                continue
            other = target.split('.')[1]
            if other != own and LAYERS[other] >= LAYERS[own]:
                bad.append(f'{importer} -> {target}')
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
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
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    graph = package_graph()
    assert 'asose_jax.run.loop' in graph and 'asose_jax.space.network' in graph
    assert sorted({m.split('.')[1] for m in graph if m != 'asose_jax'}) == sorted(LAYERS)


def test_imports_point_down():
    assert layer_violations(package_graph()) == []


def test_no_import_cycle():
    assert cycles(package_graph()) == []


def test_model_code_knows_no_optimizer_config_or_io():
    offenders = {module_name(p): sorted(i for i in imports(p) if i.split('.')[0] in MODEL_FORBIDDEN)
                 for p in (PACKAGE / 'space').rglob('*.py')}
    assert {m: found for m, found in offenders.items() if found} == {}


@pytest.mark.parametrize('graph, expected', [
    ({'asose_jax.space.ops': {'asose_jax.search.steps'}, 'asose_jax.search.steps': set()},
     ['asose_jax.space.ops -> asose_jax.search.steps']),
    ({'asose_jax.search.steps': {'asose_jax.report.monitor'}, 'asose_jax.report.monitor': set()},
     ['asose_jax.search.steps -> asose_jax.report.monitor']),
    ({'asose_jax.run.loop': {'asose_jax.search.steps', 'asose_jax.run.config'}}, []),
])
def test_the_checks_catch_an_upward_or_sideways_import(graph, expected):
    assert layer_violations(graph) == expected


def test_the_cycle_check_finds_a_cycle():
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}
    assert cycles(graph) == [['a', 'b', 'c']]
