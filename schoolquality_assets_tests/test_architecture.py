"""The layers of ARCHITECTURE.md hold: imports point down, Dagster only in the wiring, no import
cycles, no private name imported across modules, short modules, a short top level."""

import ast
from pathlib import Path

import schoolquality_assets

PACKAGE = Path(schoolquality_assets.__file__).parent
NAME = "schoolquality_assets"
SHARED = {"warehouse", "partitions", "columns", "progress"}
ALLOWED = {  # layer -> layers it may import
    "shared": {"shared"},
    "ingest": {"ingest", "shared"},
    "engine": {"engine", "shared"},
    "models": {"models", "engine", "shared"},
    "analyses": {"analyses", "models", "engine", "shared"},
    "defs": {"defs", "analyses", "models", "engine", "ingest", "shared"},
    "definitions": {"defs", "shared"},
    "deploy": {"definitions", "defs", "shared"},
}
PURE = ("shared", "ingest", "engine", "models", "analyses")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "package"
    return "shared" if parts[1] in SHARED else parts[1]


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken) for every import of the package in ``path``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(NAME):
            names = [a.name for a in node.names]
            subs = [f"{node.module}.{n}" for n in names if (PACKAGE.parent / f"{node.module}.{n}".replace(".", "/")).exists()
                    or (PACKAGE.parent / (f"{node.module}.{n}".replace(".", "/") + ".py")).exists()]
            out += [(s, []) for s in subs] or [(node.module, names)]
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith(NAME)]
    return out


SOURCES = {_module(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_imports_point_down_the_layers():
    wrong = []
    for module, path in SOURCES.items():
        for target, _ in _imports(path):
            if _layer(target) not in ALLOWED.get(_layer(module), set()) | {"package"}:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_dagster_only_in_the_wiring():
    for module, path in SOURCES.items():
        if _layer(module) in PURE:
            tree = ast.parse(path.read_text())
            names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
            assert not [n for n in names if n.split(".")[0] == "dagster"], module


def test_no_import_cycle():
    graph = {m: {t if t in SOURCES else t.rsplit(".", 1)[0] for t, _ in _imports(p)} & set(SOURCES)
             for m, p in SOURCES.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(t):] + [t])}")
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_private_name_crosses_a_module():
    crossing = [(m, t, n) for m, p in SOURCES.items() for t, names in _imports(p) for n in names
                if n.startswith("_") and t != m]
    assert not crossing, crossing


def test_modules_are_short_and_the_top_level_small():
    long = {m: n for m, p in SOURCES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, long
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 8, top
    assert {"ingest", "engine", "models", "analyses", "defs"} <= {p.name for p in PACKAGE.iterdir() if p.is_dir()}


def test_benchmark_scripts_import_names_that_exist():
    """A module moved or renamed breaks the benchmarks silently (they are scripts, not tests):
    every ``from schoolquality_assets... import name`` in benchmarks/ must resolve."""
    import ast
    import importlib

    scripts = sorted((PACKAGE.parent / "benchmarks").glob("*.py"))
    assert scripts, "no benchmark scripts found beside the package"
    missing = []
    for script in scripts:
        for node in ast.walk(ast.parse(script.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("schoolquality_assets"):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{script.name}: from {node.module} import {alias.name}")
    assert not missing, missing
