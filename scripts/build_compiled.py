#!/usr/bin/env python3
"""Build trio-mailproxy's compiled wheel (setup.py, MAILPROXY_COMPILE=1) and unpack it.

    python3 scripts/build_compiled.py DEST        # DEST/mailproxy/... with the .so files

Put DEST first on PYTHONPATH to run the compiled build beside a checkout (the bench's
"trio-mailproxy, compiled" target and tests/test_compiled_build.py do). Needs the dev
extra (mypy, setuptools, wheel): it builds without build isolation, so nothing is
downloaded. The build runs on a copy of the project, so the checkout gets no build/ files.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# what a wheel build reads (pyproject.toml names README.md as the long description)
PROJECT_FILES = ["pyproject.toml", "setup.py", "README.md", "MANIFEST.in"]
PROJECT_DIRS = ["buildsys", "src"]


def copy_project(project: Path, into: Path) -> Path:
    """Copy what a wheel build of ``project`` reads into ``into``; returns ``into``."""
    into.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        shutil.copy2(project / name, into / name)
    for name in PROJECT_DIRS:
        shutil.copytree(project / name, into / name, ignore=shutil.ignore_patterns(
            "__pycache__", "*.egg-info", "*.so", "build"))
    return into


def build_compiled(dest: Path, project: Path = REPO_ROOT) -> Path:
    """Unpack the compiled build of ``project`` (a checkout, or a copy_project() copy) into
    ``dest``, and return ``dest``. Raises CalledProcessError with pip's output."""
    with tempfile.TemporaryDirectory(prefix="mailproxy-compiled-") as tmp:
        tree = copy_project(project, Path(tmp) / "project")
        wheels = Path(tmp) / "wheels"
        env = dict(os.environ, MAILPROXY_COMPILE="1")
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                        "--no-build-isolation", "--disable-pip-version-check",
                        "-w", str(wheels), str(tree)],
                       env=env, check=True, capture_output=True, text=True)
        (wheel,) = wheels.glob("trio_mailproxy-*.whl")
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(dest)
    return dest


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        dest = build_compiled(Path(argv[0]))
    except subprocess.CalledProcessError as e:
        sys.stderr.write(e.stdout + e.stderr)
        print(f"build_compiled: pip wheel exited {e.returncode}", file=sys.stderr)
        return 1
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
