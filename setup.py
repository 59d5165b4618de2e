"""The optional compiled build (MAILPROXY_COMPILE=1): everything else is in pyproject.toml.

    pip install .                          # pure Python, the default
    MAILPROXY_COMPILE=1 pip install .      # the sans-io hot path compiled with mypyc

The compiled build turns the modules below into C extensions with mypyc (a mypy
component, pinned in buildsys/mailproxy_build.py). They are the per-login parsing and
encoding work; their Python source stays the reference, and the same tests run against
both builds (tests/test_compiled_build.py). _events.py stays Python: its NEED_DATA-style
sentinels rely on a metaclass, and mypyc's own argument type checks would replace the
LocalProtocolError a caller gets for a wrong event.
"""

import os

from setuptools import setup

COMPILED_MODULES = [
    "src/mailproxy/protocols/_errors.py",
    "src/mailproxy/protocols/_framing.py",
    "src/mailproxy/protocols/_imapquote.py",
    "src/mailproxy/protocols/forwarding.py",
    "src/mailproxy/protocols/imap.py",
]


def compiled_extensions() -> list:
    if os.environ.get("MAILPROXY_COMPILE") != "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        # pip asks for the build requirements before it installs them
        # (buildsys/mailproxy_build.py adds mypy to them), so this runs once without it
        return []
    return mypycify(COMPILED_MODULES, opt_level="3")


setup(ext_modules=compiled_extensions())
