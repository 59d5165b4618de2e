"""The opt-in compiled build (setup.py, MAILPROXY_COMPILE=1) behaves as the pure one.

Builds the compiled wheel the way an operator's `MAILPROXY_COMPILE=1 pip install .` does
(scripts/build_compiled.py: the same setup.py and build backend, without build isolation),
checks that each module setup.py lists really is a compiled extension, then runs the test
suite against that build in a fresh interpreter."""

from __future__ import annotations

import ast
import importlib.machinery
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from build_compiled import build_compiled  # noqa: E402

# The whole suite runs against the compiled build (mypyc checks argument types at run
# time, so a caller passing a bytearray where a signature says bytes fails only there),
# except the tests of the build and the bench, which build and measure it themselves.
NOT_AGAINST_THE_BUILD = ["tests/test_compiled_build.py", "tests/test_bench_smoke.py",
                         "tests/test_bench_compare.py"]


def compiled_module_names() -> list[str]:
    """setup.py's COMPILED_MODULES, as module names."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    (paths,) = [ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign)
                and any(getattr(t, "id", None) == "COMPILED_MODULES" for t in node.targets)]
    return [p.removeprefix("src/").removesuffix(".py").replace("/", ".") for p in paths]


@pytest.fixture(scope="module")
def compiled_build(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of an interpreter that imports mailproxy from the compiled build."""
    dest = tmp_path_factory.mktemp("compiled")
    try:
        build_compiled(dest)
    except subprocess.CalledProcessError as e:
        pytest.fail(f"the compiled build failed:\n{e.stdout}{e.stderr}")
    return dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")


def test_listed_modules_are_compiled_extensions(compiled_build: dict[str, str]) -> None:
    names = compiled_module_names()
    assert "mailproxy.protocols.imap" in names
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n"
            "    print(name, importlib.import_module(name).__file__)\n")
    r = subprocess.run([sys.executable, "-c", code], env=compiled_build,
                       capture_output=True, text=True, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    files = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert sorted(files) == sorted(names)
    for name, file in files.items():
        assert file.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), (name, file)


@pytest.mark.timeout(1800)
def test_the_suite_passes_against_the_compiled_build(compiled_build: dict[str, str]) -> None:
    # pytest runs in the interpreter that has just imported the compiled modules, so the
    # tests cannot pick up the checkout's source instead
    code = ("import importlib, sys, pytest\n"
            f"for name in {compiled_module_names()!r}:\n"
            "    assert not importlib.import_module(name).__file__.endswith('.py'), name\n"
            "ignored = [f'--ignore={path}' for path in "
            f"{NOT_AGAINST_THE_BUILD!r}]\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *ignored, 'tests']))\n")
    r = subprocess.run([sys.executable, "-c", code], env=compiled_build, capture_output=True,
                       text=True, cwd=REPO_ROOT, timeout=1700)
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    # skips follow the same rule as the plain run (under CI=true an e2e skip fails)
    assert re.search(r"\b\d+ passed\b", summary), summary
    assert not re.search(r"\b\d+ (failed|errors?)\b", summary), summary
