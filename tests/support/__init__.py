"""Test/ops support code shared by the test suite, spec/capture.py and scripts/demo.py.

Owns: starting private Dovecot instances (``dovecot.py``), loopback port helpers
(``net.py``), throw-away TLS certificates (``tls.py``) and counting a Trio task's
wake-ups (``steps.py``). Nothing here imports
``mailproxy``: these helpers must work while the proxy itself is half-written, and they
are the independent reference the proxy is checked against.

Import it as ``tests.support`` with the repository root on ``sys.path`` (tests/conftest.py
and scripts/demo.py arrange that).
"""
