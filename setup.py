"""The optional compiled build (MAILPROXY_COMPILE=1): everything else is in pyproject.toml.

    pip install .                          # pure Python, the default
    MAILPROXY_COMPILE=1 pip install .      # the login hot path compiled with mypyc

The compiled build turns the modules below into C extensions with mypyc (a mypy
component; the pin is the dev extra's, see buildsys/mailproxy_build.py): the sans-io
parsing and encoding of a login and its SASL exchanges; in io/ the session's driver, the
backend login, the socket stream, the relays and the workers' steering; in passdb/ the
chain, the static driver, %variable expansion and the routing decision. Their Python
source stays the reference, and the whole test suite runs against both builds
(tests/test_compiled_build.py). mypyc checks annotations at run time (a bytearray passed
where `bytes` is declared raises TypeError) and compiles `raise ... from e` without
setting __cause__, so code here must say what it accepts and set a cause it relies on by
hand. _events.py stays Python: its NEED_DATA-style sentinels rely on a metaclass, and
mypyc's own argument type checks would replace the LocalProtocolError a caller gets for
a wrong event. Trio-facing modules compile as long as Trio's classes stay their bases. A
compiled class cannot be subclassed or patched from Python (tests do both to the
passwd-file driver, the auth cache and the daemon's accept loop), and log.py's handler,
a compiled logging.StreamHandler subclass, crashed the interpreter at exit (weak
references): those modules stay Python, with config parsing, the CLI and the password
schemes (whose work is in C libraries already).
"""

import os

from setuptools import setup

COMPILED_MODULES = [
    "src/mailproxy/protocols/_errors.py",
    "src/mailproxy/protocols/_framing.py",
    "src/mailproxy/protocols/_imapquote.py",
    "src/mailproxy/protocols/forwarding.py",
    "src/mailproxy/protocols/imap.py",
    "src/mailproxy/protocols/sasl.py",
    "src/mailproxy/io/backend.py",
    "src/mailproxy/io/relay.py",
    "src/mailproxy/io/session.py",
    "src/mailproxy/io/splice_hub.py",
    "src/mailproxy/io/steering.py",
    "src/mailproxy/io/stream.py",
    "src/mailproxy/passdb/base.py",
    "src/mailproxy/passdb/fields.py",
    "src/mailproxy/passdb/static.py",
    "src/mailproxy/passdb/variables.py",
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
