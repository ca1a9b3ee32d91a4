"""The image ships guest code only, and that code runs with what the guest has: the standard library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from firecracer.image.rootfs import guest_files

SCRIPT = """
import importlib, sys
names = sys.argv[1:]
for name in names:
    importlib.import_module(name)
ours = sorted(m for m in sys.modules if m.startswith("firecracer"))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("numpy", "click", "rich"))
print(repr((ours, heavy)))
"""


def test_shipped_files_are_guest_code_and_its_leaves() -> None:
    names = [rel for rel, _ in guest_files()]
    assert "guest/agent.py" in names and "formats.py" in names
    assert not any(n.startswith(("guest/client", "guest/kernelpages", "agentclient")) for n in names)


def test_shipped_set_imports_alone_without_numpy(tmp_path: Path) -> None:
    """Copied as image/rootfs.py copies it (with its own ``__init__``), every module imports in an isolated
    interpreter that cannot see the checkout, and pulls in no numpy and no module that was not shipped."""
    pkg = tmp_path / "firecracer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""guest copy"""\n')
    modules = []
    for rel, data in guest_files():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_bytes(data)
        if rel.endswith(".py"):
            modules.append("firecracer." + rel.removesuffix(".py").removesuffix("/__init__")
                           .replace("/", "."))
    script = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + SCRIPT
    out = subprocess.run([sys.executable, "-I", "-S", "-c", script, *modules], capture_output=True, text=True,
                         timeout=120, check=False, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    ours, heavy = ast.literal_eval(out.stdout)
    assert heavy == []
    shipped = {"firecracer", *modules}
    assert set(ours) <= shipped, sorted(set(ours) - shipped)
