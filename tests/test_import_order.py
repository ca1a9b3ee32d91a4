"""Every module imports on its own, first: an import cycle that only bites when one module is imported
before the others (the page server starts with ``firecracer.uffd``) fails here, not in a restore."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import firecracer

SCRIPT = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m == "firecracer" or m.startswith("firecracer.")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report every module that cannot be imported first
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print("\\n".join(failed))
"""


def test_every_module_imports_first() -> None:
    names = [m.name for m in pkgutil.walk_packages(firecracer.__path__, "firecracer.")
             if not m.name.endswith("__main__") and ".guest_init." not in m.name]
    assert len(names) > 50
    out = subprocess.run([sys.executable, "-c", SCRIPT, *names], capture_output=True, text=True, timeout=240,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "", out.stdout
