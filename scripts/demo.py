#!/usr/bin/env python3
"""Quick demo: a private Dovecot backend and trio-mailproxy in front of it.

    bash scripts/demo.sh              # setup.sh, then this script
    python3 scripts/demo.py [--backend-only] [--backend-port 14300]

Starts a throw-away Dovecot (tests/support/dovecot.py) on 127.0.0.1:14300 with users
alice/alicepw and bob/bobpw, then runs ``trio-mailproxy run -c examples/quickstart.toml``
(proxy on 127.0.0.1:10143, routing both users to the backend through examples/users) in
the foreground. Ctrl-C stops both; so does the proxy exiting on its own.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.dovecot import (  # noqa: E402
    DEFAULT_USERS,
    DovecotBackend,
    DovecotError,
    dovecot_missing_reason,
)

CONFIG = REPO / "examples" / "quickstart.toml"
PROXY = "127.0.0.1:10143"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend-port", type=int, default=14300,
                    help="the port examples/users routes to (default 14300)")
    ap.add_argument("--backend-only", action="store_true",
                    help="start only the Dovecot backend (e.g. to run the proxy yourself)")
    args = ap.parse_args()

    reason = dovecot_missing_reason()
    if reason:
        print(f"demo: {reason}", file=sys.stderr)
        return 1
    command = shutil.which("trio-mailproxy")
    if command is None and not args.backend_only:
        print("demo: the trio-mailproxy command is not installed: run scripts/setup.sh",
              file=sys.stderr)
        return 1

    # The backend also speaks implicit TLS, with a CA made for this run only.
    certdir = Path(tempfile.mkdtemp(prefix="trio-mailproxy-demo-"))
    tls = None
    try:
        from tests.support.tls import make_tls_files

        tls = make_tls_files(certdir)
    except ImportError:
        pass  # trustme missing: the demo works without the TLS extra

    backend = DovecotBackend(
        DEFAULT_USERS,
        protocols=("imap",),
        imap_port=args.backend_port,
        tls_cert=tls.cert if tls else None,
        tls_key=tls.key if tls else None,
        auth_failure_delay=0,
    )
    proxy: subprocess.Popen[bytes] | None = None
    # Ctrl-C raises KeyboardInterrupt even if we were started with SIGINT ignored (as
    # background jobs of a non-interactive shell are), and SIGTERM ends the demo the
    # same way.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        try:
            backend.start()
        except DovecotError as e:
            print(f"demo: {e}", file=sys.stderr)
            return 1
        print(f"backend: Dovecot on {backend.host}:{backend.imap_port} "
              f"(users: {', '.join(f'{u}/{p}' for u, p in DEFAULT_USERS.items())}); "
              f"log: {backend.log_path}", flush=True)
        if args.backend_only:
            print("backend only: start the proxy with "
                  f"`trio-mailproxy run -c {CONFIG.relative_to(REPO)}`; Ctrl-C to stop",
                  flush=True)
            signal.pause()
            return 0

        assert command is not None
        proxy = subprocess.Popen([command, "run", "-c", str(CONFIG)])
        host, port = PROXY.split(":")
        print(f"proxy:   trio-mailproxy on {PROXY} (config {CONFIG.relative_to(REPO)})")
        print(f"try:     curl -v --url imap://{PROXY}/ --user alice:alicepw")
        print(f"   or:   nc -C {host} {port}    then  a LOGIN alice alicepw  /  b LOGOUT")
        if tls and backend.imaps_port:
            print(f"tls:     openssl s_client -connect 127.0.0.1:{backend.imaps_port} "
                  f"-CAfile {tls.ca} -quiet    (the backend's own imaps, for comparison)")
        print("Ctrl-C stops the proxy and the backend.", flush=True)
        return proxy.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proxy is not None and proxy.poll() is None:
            # Ctrl-C already reached the proxy (same process group); SIGTERM covers the
            # other ways here. It drains for shutdown_grace (2 s in quickstart.toml).
            proxy.send_signal(signal.SIGTERM)
            try:
                proxy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()
        backend.stop()
        shutil.rmtree(certdir, ignore_errors=True)
        print("demo stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
