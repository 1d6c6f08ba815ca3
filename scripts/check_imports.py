"""Import rules that import-linter's layers contract does not express (run by `make lint`).

- No function-local import of the portal's own packages: an import inside a function
  hides a dependency (often to dodge a cycle). Allowed only where Django or a tool demands
  it: AppConfig.ready(), portal/asgi.py (Django must be set up before models load), and
  `if TYPE_CHECKING:` blocks (type hints only).
- No import of a private name (`_name`) or private module from another module.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGES = ("core", "registry", "accounts", "inference", "monitoring", "portal")
ROOT = Path(__file__).resolve().parent.parent
# (file, function) pairs where a function-local import is how Django or the tool works.
ALLOWED_LOCAL = {("portal/asgi.py", "_build"), ("inference/sandbox/host.py", "main")}


def _own(module: str | None) -> bool:
    return bool(module) and module.split(".")[0] in PACKAGES


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def problems(path: Path) -> list[str]:
    relative = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(), filename=relative)
    found: list[str] = []

    def visit(node: ast.AST, function: str | None, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner, checking = function, type_checking
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                inner = child.name
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                checking = True
            if isinstance(child, ast.Import | ast.ImportFrom):
                check(child, function, type_checking)
            visit(child, inner, checking)

    def check(node: ast.Import | ast.ImportFrom, function: str | None, type_checking: bool) -> None:
        if isinstance(node, ast.ImportFrom):
            if node.level or not _own(node.module):
                return
            modules = [node.module or ""]
            names = [alias.name for alias in node.names]
        else:
            modules = [alias.name for alias in node.names if _own(alias.name)]
            names = []
            if not modules:
                return
        where = f"{relative}:{node.lineno}"
        allowed = (path.name == "apps.py" and function == "ready") or (relative, function) in ALLOWED_LOCAL
        if function and not type_checking and not allowed:
            found.append(f"{where}: import of {', '.join(modules)} inside {function}(); import it at the top")
        for module in modules:
            if any(part.startswith("_") and part != "__init__" for part in module.split(".")):
                found.append(f"{where}: imports the private module {module}")
        same_module = modules[0] == _module_name(path)
        for name in names:
            if name.startswith("_") and not same_module:
                found.append(f"{where}: imports the private name {name} from {modules[0]}")

    visit(tree, None, False)
    return found


def main() -> int:
    files = [path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))]
    found = [problem for path in files if "migrations" not in path.parts for problem in problems(path)]
    for problem in found:
        print(problem)
    print(f"check_imports: {len(files)} files, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
