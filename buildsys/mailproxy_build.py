"""trio-mailproxy's build backend: setuptools', plus the opt-in compiled build.

With MAILPROXY_COMPILE=1 in the environment, a wheel build also requires mypy (whose mypyc
compiles setup.py's COMPILED_MODULES) and the project's own dependencies (the compiled
modules are type-checked against trio's types, as in a development install), and fails
with a one-line reason where it cannot compile, rather than quietly producing a pure
wheel. Editable installs are always pure: compiled modules beside an edited source would
run stale code.
"""

import os
import tomllib
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F401,F403  (the other PEP 517/660 hooks)


def _compile_requirements() -> list[str]:
    """mypy as the dev extra pins it (one pin for both), and the runtime dependencies."""
    project = tomllib.loads(
        (Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    dev = project["optional-dependencies"]["dev"]
    return [next(r for r in dev if r.startswith("mypy==")), *project["dependencies"]]


COMPILE_REQUIREMENTS = _compile_requirements()
MYPYC_REQUIREMENT = COMPILE_REQUIREMENTS[0]


def _compiling() -> bool:
    return os.environ.get("MAILPROXY_COMPILE") == "1"


def get_requires_for_build_wheel(config_settings=None):
    extra = COMPILE_REQUIREMENTS if _compiling() else []
    return _setuptools.get_requires_for_build_wheel(config_settings) + extra


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if _compiling():
        try:
            import mypyc.build  # noqa: F401
        except ImportError:
            raise SystemExit(f"MAILPROXY_COMPILE=1: the compiled build needs "
                             f"{MYPYC_REQUIREMENT} in the build environment") from None
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    if _compiling():
        raise SystemExit("MAILPROXY_COMPILE=1: the compiled build cannot be editable "
                         "(compiled modules would not follow edits); use pip install .")
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
