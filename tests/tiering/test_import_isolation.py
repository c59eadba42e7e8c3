"""tiering/ is pure domain logic: importing all of it pulls in no framework or vendor SDK."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import tiering

FORBIDDEN = ("apache_beam", "prefect", "openai", "weaviate", "torch", "sentence_transformers",
             "lancedb", "opentelemetry")


def test_importing_every_tiering_module_pulls_no_framework() -> None:
    modules = [f"tiering.{m.name}" for m in pkgutil.iter_modules(tiering.__path__)]
    assert "tiering.routing" in modules and "tiering.settings" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = [f for f in {FORBIDDEN!r} if f in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"tiering imported: {out.stdout.strip()}"
