"""Layering: imports go one way, from the top floor down, and close no circle (README "Layout").

    app          CLI, serve, watcher, intake, demo, deploy, local servers (the top floor)
    deployments  one deployment per flow
    flows        one module per runbook section
    tasks        @task building blocks, the incident backbone  |  reports   analytics and PDFs
    runbook      the ground floor: settings, alert catalogue, journal, policy, locks, redaction, markdown

A package may import its own modules and the packages of FLOORS[package]; tasks and reports stand side by
side and do not import each other. `sandbox/` is the stand-in for the outside world (the bot, the exchange,
Slack): it may read the ground floor's settings and nothing above, and only the app (`runbook sandbox ...`)
imports it. bench/ and tests/ may import anything; nothing imports them.

The check reads every module's AST (no import is executed), so a function-level (lazy) import counts as much
as one at the top of a file, and so does one under `if TYPE_CHECKING:`. Besides the floors it finds circles:
between modules (a imports b imports a, however long the ring) and between packages.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# package -> the packages it may import (its own modules are always allowed)
FLOORS: dict[str, frozenset[str]] = {
    "runbook": frozenset(),
    "tasks": frozenset({"runbook"}),
    "reports": frozenset({"runbook"}),
    "flows": frozenset({"runbook", "tasks", "reports"}),
    "deployments": frozenset({"runbook", "tasks", "reports", "flows"}),
    "app": frozenset({"runbook", "tasks", "reports", "flows", "deployments", "sandbox"}),
    "sandbox": frozenset({"runbook"}),
}
# First-party top-level names that no checked package may import (they may import everything).
UNCHECKED = frozenset({"bench", "tests", "conftest"})


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name (or package) it names
    line: int
    lazy: bool  # inside a function

    def where(self) -> str:
        return f"{self.importer} (line {self.line}{', function-level' if self.lazy else ''})"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def imports_of(root: Path, packages: tuple[str, ...]) -> list[Import]:
    """Every import statement of every module of `packages`, top-level or not, with what it names."""
    known = modules(root, packages)
    first_party = set(packages) | UNCHECKED
    found = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        lazy_lines = {n.lineno for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                      for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the importer's package
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                for alias in node.names:  # `from a.b import c` names the module a.b.c when it is one
                    candidate = f"{module}.{alias.name}"
                    targets.append(candidate if candidate in known else module)
            for target in targets:
                if target.split(".")[0] in first_party:
                    found.append(Import(name, target, node.lineno, node.lineno in lazy_lines))
    return list(dict.fromkeys(found))  # `from a import b, c` names a once


def package_of(module: str) -> str:
    return module.split(".")[0]


def floor_violations(found: list[Import]) -> list[str]:
    out = []
    for imp in found:
        source, target = package_of(imp.importer), package_of(imp.imported)
        if source == target:
            continue
        if target in UNCHECKED:
            out.append(f"{imp.where()} imports {imp.imported}: nothing in the product imports {target}/")
        elif target not in FLOORS[source]:
            allowed = f"only {', '.join(sorted(FLOORS[source]))}" if FLOORS[source] else "no other package"
            out.append(f"{imp.where()} imports {imp.imported}: {source}/ may import {allowed} "
                       f"({target}/ is not below it)")
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node, or a node importing itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def circle_violations(found: list[Import]) -> list[str]:
    out = []
    module_edges: dict[str, set[str]] = {}
    package_edges: dict[str, set[str]] = {}
    for imp in found:
        module_edges.setdefault(imp.importer, set()).add(imp.imported)
        source, target = package_of(imp.importer), package_of(imp.imported)
        if source != target:
            package_edges.setdefault(source, set()).add(target)
    for component in _cycles(module_edges):
        members = set(component)
        ring = "; ".join(f"{imp.where()} imports {imp.imported}" for imp in found
                         if imp.importer in members and imp.imported in members)
        out.append(f"modules import each other in a circle ({', '.join(component)}): {ring}")
    for component in _cycles(package_edges):
        members = set(component)
        ring = "; ".join(f"{imp.where()} imports {imp.imported}" for imp in found
                         if package_of(imp.importer) in members and package_of(imp.imported) in members
                         and package_of(imp.importer) != package_of(imp.imported))
        out.append(f"packages import each other in a circle ({', '.join(component)}): {ring}")
    return out


def violations(root: Path, packages: tuple[str, ...] = tuple(FLOORS)) -> list[str]:
    found = imports_of(root, packages)
    return floor_violations(found) + circle_violations(found)


def test_every_import_goes_down_and_closes_no_circle() -> None:
    found = imports_of(ROOT, tuple(FLOORS))
    assert len({imp.importer for imp in found}) > 50  # the walk did read the repository
    problems = violations(ROOT)
    assert not problems, "layering (tests/test_layering.py, README \"Layout\"):\n" + "\n".join(problems)


def test_every_package_has_its_floor() -> None:
    """A new top-level package must be given its place here, or its imports would go unchecked."""
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    assert packages - UNCHECKED == set(FLOORS), "give the new package its floor in FLOORS"


def _plant(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_check_catches_a_planted_climb_a_lazy_climb_and_circles(tmp_path: Path) -> None:
    _plant(tmp_path, {
        **{f"{package}/__init__.py": "" for package in FLOORS},
        "runbook/settings.py": "from tasks.notify import post\n",  # the ground floor climbs
        "runbook/journal.py": "def f():\n    from app import cli\n    return cli\n",  # a lazy climb
        "tasks/notify.py": "from runbook import settings\nfrom reports.pdf import render\n",  # sideways
        "reports/pdf.py": "from reports.daily import x\n",
        "reports/daily.py": "def g():\n    from . import pdf\n    return pdf\n",  # a circle, lazily closed
        "flows/a.py": "from bench import common\n",
        "app/cli.py": "import flows.a\n",
        "sandbox/bot.py": "from tasks import notify\n",
    })
    problems = violations(tmp_path)
    text = "\n".join(problems)
    assert "runbook.settings (line 1) imports tasks.notify: runbook/ may import no other package" in text
    assert "runbook.journal (line 2, function-level) imports app.cli: runbook/" in text
    assert "tasks.notify (line 2) imports reports.pdf: tasks/ may import only runbook" in text
    assert "flows.a (line 1) imports bench: nothing in the product imports bench/" in text
    assert "sandbox.bot (line 1) imports tasks.notify: sandbox/ may import only runbook" in text
    assert any(p.startswith("modules import each other in a circle (reports.daily, reports.pdf)")
               and "reports.daily (line 2, function-level) imports reports.pdf" in p for p in problems)
    # runbook.settings <-> tasks.notify: a circle between modules and one between their packages
    assert any(p.startswith("modules import each other in a circle (runbook.settings, tasks.notify)") for p in problems)
    assert any(p.startswith("packages import each other in a circle (runbook, tasks)") for p in problems)
    assert not any("app.cli" in p and "imports flows.a" in p for p in problems)  # going down is fine
    assert len(problems) == 8, text
