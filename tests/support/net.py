"""Loopback networking helpers for tests: free ports and waiting for a listener.

Everything here talks to loopback addresses only (127.0.0.0/8, ::1): tests never reach
another host.
"""

from __future__ import annotations

import socket
import time

__all__ = ["free_port", "wait_for_greeting"]


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now.

    The kernel picks it (bind to port 0), so it comes from the ephemeral range. There is
    an unavoidable window between closing our socket and the caller binding the port;
    DovecotBackend retries its start with fresh ports when that race is lost.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_greeting(
    host: str, port: int, *, timeout: float = 10.0, prefix: bytes = b"* OK"
) -> bytes:
    """Connect to ``host:port`` until a greeting line starting with ``prefix`` arrives.

    Returns the greeting line (CRLF stripped). Raises TimeoutError if none came within
    ``timeout`` seconds. Each attempt is a fresh connection: a server that is still
    starting may refuse or accept-and-close.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1.0) as s:
                buf = b""
                while b"\r\n" not in buf and len(buf) < 4096:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    buf += chunk
                line = buf.split(b"\r\n", 1)[0]
                if line.startswith(prefix):
                    return line
                last_error = ConnectionError(f"unexpected greeting {line!r}")
        except OSError as e:
            last_error = e
        time.sleep(0.05)
    raise TimeoutError(
        f"no greeting from {host}:{port} within {timeout:g}s (last error: {last_error})"
    )
