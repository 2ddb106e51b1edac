"""The code's one picture: lskd/ imports nothing of fairseq, imports flow one way, no cycles."""
import ast
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("lskd", "fairseq_plugins", "data_prep", "eval")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module an import statement names, including those inside functions (late imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph = defaultdict(set)
    for name, path in modules.items():
        graph[name] |= {m for m in imports_of(path) if m in modules and m != name}
    return graph


def test_the_core_imports_nothing_of_fairseq_nor_of_the_entry_points():
    for path in (REPO / "lskd").rglob("*.py"):
        bad = {m for m in imports_of(path) if m.split(".")[0] in ("fairseq", "fairseq_cli", "fairseq_plugins",
                                                                  "data_prep", "eval")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_the_adapter_imports_no_entry_point():
    for path in (REPO / "fairseq_plugins").rglob("*.py"):
        bad = {m for m in imports_of(path) if m.split(".")[0] in ("data_prep", "eval")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``edges`` (depth-first search), or None."""
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = 1
        for child in sorted(edges.get(node, ())):
            if state.get(child) == 1:
                return trail[trail.index(child):] + [child]
            if child not in state and (cycle := visit(child, trail + [child])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def sub_package(module: str) -> str:
    """``lskd.train.trainer`` -> ``lskd.train``; a top-level module (``lskd.losses``) stands for itself."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else module


def test_no_import_cycles_between_modules_or_sub_packages():
    graph = project_graph()
    # a package's __init__ importing its own submodules is how Python packages register things
    modules = {a: {b for b in targets if not b.startswith(a + ".")} for a, targets in graph.items()}
    assert find_cycle(modules) is None, "import cycle: " + " -> ".join(find_cycle(modules))
    packages = defaultdict(set)
    for a, targets in modules.items():
        packages[sub_package(a)] |= {sub_package(b) for b in targets} - {sub_package(a)}
    assert find_cycle(packages) is None, "import cycle: " + " -> ".join(find_cycle(packages))
