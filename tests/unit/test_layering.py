"""DESIGN.md's layering: the domain imports neither Flask nor Celery; views and tasks import the domain."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import billing_core


def test_billing_core_imports_neither_flask_nor_celery() -> None:
    # given every module of billing_core, imported in a fresh interpreter
    root = Path(billing_core.__file__).parent
    modules = sorted(
        ".".join(("billing_core", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        for p in root.rglob("*.py")
    )
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'celery', 'kombu', 'werkzeug')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    # then no web or queue framework came with them
    assert done.stdout.strip() == "[]", done.stdout
    assert len(modules) > 15
