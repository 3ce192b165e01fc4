"""DESIGN.md's layering: the domain imports neither Flask nor Celery nor any package around it (entry points,
the CLI, the emulator); the offline Stripe imports nothing of the domain. Views and tasks import the domain."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import billing_core
import stripe_emulator

FRAMEWORKS = ("flask", "celery", "kombu", "werkzeug")
# The packages around the domain: they may import billing_core, never the other way round.
OUTER_PACKAGES = ("billing_cli", "webhook_receiver", "worker", "stripe_emulator")


def module_names(package: ModuleType) -> list[str]:
    root = Path(str(package.__file__)).parent
    return sorted(
        ".".join((root.name, *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for p in root.rglob("*.py")
    )


def imported_top_levels(package: ModuleType) -> dict[str, set[str]]:
    """Each module's imported top-level packages, read from its source: imports inside functions count too."""
    root = Path(str(package.__file__)).parent
    found: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(root.parent))] = names
    return found


def loaded_after_importing(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The modules under ``prefixes`` that importing ``modules`` in a fresh interpreter brought in."""
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {prefixes!r}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return list(ast.literal_eval(done.stdout.strip()))


def test_billing_core_imports_neither_flask_nor_celery() -> None:
    # given every module of billing_core, imported in a fresh interpreter
    modules = module_names(billing_core)
    # then no web or queue framework came with them, nor any package of the layer around the domain
    assert loaded_after_importing(modules, FRAMEWORKS + OUTER_PACKAGES) == []
    assert len(modules) > 15


def test_billing_core_names_no_outer_package_even_in_a_function() -> None:
    # given every import statement of billing_core, at module level or inside a function
    offending = {
        module: sorted(names & set(FRAMEWORKS + OUTER_PACKAGES))
        for module, names in imported_top_levels(billing_core).items()
        if names & set(FRAMEWORKS + OUTER_PACKAGES)
    }
    # then none reaches out of the domain
    assert offending == {}


def test_the_stripe_emulator_imports_nothing_of_billing_core() -> None:
    # given the offline Stripe: it stands for Stripe, which knows nothing of our ledger
    offending = {
        module: sorted(names & {"billing_core", "billing_cli", "webhook_receiver", "worker"})
        for module, names in imported_top_levels(stripe_emulator).items()
        if names & {"billing_core", "billing_cli", "webhook_receiver", "worker"}
    }
    assert offending == {}
    # and importing all of it brings none of ours along indirectly
    assert loaded_after_importing(module_names(stripe_emulator), ("billing_core",)) == []
