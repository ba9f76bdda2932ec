"""The layers point one way and no module imports itself back: every ``import`` in the package, at module level or
inside a function, read from the source."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"anomalens": "anomalens", "prompts": "anomalens.prompts", "rules": "anomalens.rules",
           "tools": "anomalens.tools", "agents": "anomalens.agents", "pipelines": "anomalens.pipelines",
           "eval": "anomalens.eval", "web": "anomalens.web"}  # fmt: skip
# Lower layers never import higher ones. Prompts are data anyone may read; the app, like the benchmarks, calls
# pipelines; the CLI sits on top.
RANK = {"anomalens": 0, "anomalens.prompts": 0, "anomalens.rules": 1, "anomalens.tools": 2, "anomalens.agents": 3,
        "anomalens.pipelines": 4, "anomalens.eval": 5, "anomalens.web": 5, "anomalens.cli": 6}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join([package, *parts])
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        out |= {name for name in names if name in known}
    return out


def layer(module: str) -> str:
    if module in ("anomalens.cli", "anomalens.__main__"):  # the command line: on top of everything
        return "anomalens.cli"
    return next((p for p in sorted(RANK, key=len, reverse=True) if module.startswith(p + ".") or module == p))


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) - {name} for name, path in found.items()}


def test_layers_point_one_way():
    wrong = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)})"
        for module, targets in graph().items()
        for target in targets
        if RANK[layer(target)] > RANK[layer(module)]
    ]
    assert wrong == []


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A chain of imports that comes back to where it started, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    return next((cycle for module in sorted(edges) if module not in state and (cycle := visit(module))), None)


def test_no_import_cycles():
    assert find_cycle(graph()) is None


def test_the_checker_finds_imports_inside_functions_cycles_and_layers(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from anomalens.pipelines.audit import audit\n")
    assert imports(tmp_path / "a.py", {"anomalens.pipelines.audit", "anomalens.types"}) == {"anomalens.pipelines.audit"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    assert layer("anomalens.tools.scene") == "anomalens.tools" and layer("anomalens.types") == "anomalens"
