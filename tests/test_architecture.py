"""The package's imports form no cycle between modules (docs/architecture.md).

``lint-imports`` (scripts/lint) checks the direction of the layers; this test checks what a
layers contract cannot see: two modules of one layer importing each other, directly or through
others. Imports inside functions count: a lazy import that dodges a cycle at start-up still
ties the two modules together. The graph is grimp's, import-linter's own graph library.
"""

from __future__ import annotations

import itertools

import grimp


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    """One closed path through the component, with the line of each import."""
    start = component[0]
    members = set(component)
    path = [start]
    seen = {start}
    node = start
    while True:
        nexts = sorted(m for m in graph.find_modules_directly_imported_by(node) if m in members)
        back = start if start in nexts and len(path) > 1 else None
        step = back or next((m for m in nexts if m not in seen), nexts[0])
        path.append(step)
        if step in seen:
            break
        seen.add(step)
        node = step
    lines = []
    for importer, imported in itertools.pairwise(path):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details[:2])
        lines.append(f"  {importer} -> {imported} ({where})")
    return "\n".join(lines)


def test_no_module_imports_itself_through_others() -> None:
    graph = grimp.build_graph("mailgateway", include_external_packages=False)
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n\n".join(
        f"{len(c)} modules: {', '.join(c)}\n{_describe(graph, c)}" for c in cycles)


def test_the_cycle_check_sees_a_cycle() -> None:
    """The check itself: a graph with a lazy import back to its importer is a cycle."""
    graph = grimp.ImportGraph()
    for module in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(module)
    graph.add_import(importer="pkg.a", imported="pkg.b", line_number=1, line_contents="from pkg import b")
    graph.add_import(importer="pkg.b", imported="pkg.a", line_number=9, line_contents="from pkg import a")
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]
    assert "pkg.b -> pkg.a (line 9: from pkg import a)" in _describe(graph, ["pkg.a", "pkg.b"])
