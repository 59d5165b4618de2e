"""mailproxy.protocols is sans-io: importing it (and every module under it) must not pull
in socket, ssl, trio, anyio, asyncio or selectors. Checked in a fresh interpreter, since
this test process has long imported all of them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("socket", "ssl", "trio", "anyio", "asyncio", "selectors")

CODE = """
import sys, pkgutil, importlib
import mailproxy.protocols as p
for m in pkgutil.walk_packages(p.__path__, p.__name__ + "."):
    importlib.import_module(m.name)
bad = [m for m in {forbidden!r} if m in sys.modules]
assert not bad, bad
print("ok")
"""


def test_protocols_import_no_io_modules() -> None:
    r = subprocess.run([sys.executable, "-c", CODE.format(forbidden=FORBIDDEN)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_plain_import_of_the_package() -> None:
    code = ("import sys, mailproxy.protocols; "
            f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_protocols_source_never_imports_io_modules() -> None:
    # A static check too, so an import inside a function cannot sneak in.
    import mailproxy.protocols as p

    for path in Path(p.__path__[0]).rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                names = ["mailproxy." + node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, (path, name)
                assert not name.startswith(("mailproxy.io", "mailproxy.passdb")), (path, name)
