"""The package as a whole: its modules import each other without a cycle."""
import ast
from pathlib import Path

import tinygpt

PACKAGE = Path(tinygpt.__file__).parent


def imported_modules(path: Path) -> set[str]:
    """The tinygpt modules a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinygpt"):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("tinygpt"))
    return names


def test_no_module_of_the_package_imports_itself_through_others():
    modules = {"tinygpt." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts): path
               for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" and path.name != "__main__.py"}
    graph = {name: {other for other in imported_modules(path) if other in modules and other != name}
             for name, path in modules.items()}

    def reaches(start: str) -> set[str]:
        seen, pending = set(), list(graph[start])
        while pending:
            name = pending.pop()
            if name not in seen:
                seen.add(name)
                pending.extend(graph[name])
        return seen

    cycles = sorted(name for name in graph if name in reaches(name))
    assert not cycles, f"modules on an import cycle: {cycles}"
