"""Runs the real `trio-mailproxy` daemon as a subprocess for end-to-end tests.

The daemon is started exactly as an operator starts it (`trio-mailproxy run -c FILE`),
with a TOML file written into a temp dir, listeners on free loopback ports, and its log
(stderr) captured to a file the test can read. stop() sends SIGTERM and waits; anything
left is killed, so no test leaves a process behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Sequence

from .net import free_port

__all__ = ["MailProxy"]


class MailProxy:
    def __init__(
        self,
        passdb_lines: str,
        *,
        listeners: Sequence[tuple[str, str]] = (("imap", "none"),),
        host: str = "127.0.0.1",
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        top: str = "",
        auth: str = "disable_plaintext_auth = false\nfailure_delay = 0",
        limits: str = "",
        files: dict[str, str] | None = None,
        ports: Sequence[int] | None = None,
    ) -> None:
        """passdb_lines: TOML for the [[passdb]] tables (and nothing else).
        listeners: (protocol, tls mode) pairs; each gets a free port on `host`, in order
        in `.ports` (or the given `ports`, for a passdb that must name them). files: name → content written beside the config (passwd-files)."""
        self.dir = Path(tempfile.mkdtemp(prefix="mailproxy-test-"))
        self.host = host
        self.ports = list(ports) if ports else [free_port(host) for _ in listeners]
        for name, content in (files or {}).items():
            (self.dir / name).write_text(content)
        # Tests stop the daemon with SIGTERM; a short grace keeps that quick.
        if "shutdown_grace" not in top:
            top = "shutdown_grace = 1\n" + top
        parts = [top.strip(), ""]
        for (protocol, tls), port in zip(listeners, self.ports):
            bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            parts.append(f'[[listener]]\nprotocol = "{protocol}"\nbind = "{bind}"\n'
                         f'tls = "{tls}"\n')
        parts.append(textwrap.dedent(passdb_lines).strip() + "\n")
        if tls_cert or ca_file:
            parts.append("[tls]\n"
                         + (f'cert_file = "{tls_cert}"\nkey_file = "{tls_key}"\n'
                            if tls_cert else "")
                         + (f'ca_file = "{ca_file}"\n' if ca_file else ""))
        parts.append("[auth]\n" + textwrap.dedent(auth).strip() + "\n")
        if limits:
            parts.append("[limits]\n" + textwrap.dedent(limits).strip() + "\n")
        self.config_path = self.dir / "proxy.toml"
        self.config_path.write_text("\n".join(parts))
        self.log_path = self.dir / "proxy.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.ports[0]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, needle: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_text()
            if needle in text:
                return text
            time.sleep(0.02)
        raise AssertionError(f"{needle!r} not logged within {timeout}s; log:\n{self.log_text()}")

    def start(self) -> "MailProxy":
        log = open(self.log_path, "wb")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mailproxy.cli", "run", "-c", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"trio-mailproxy exited with {self._proc.returncode}:\n"
                                   f"{self.log_text()}")
            if self.log_text().count("listening on") >= len(self.ports):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"trio-mailproxy did not start listening:\n{self.log_text()}")

    def signal(self, sig: int) -> None:
        assert self._proc is not None
        self._proc.send_signal(sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._proc = None
        return proc.returncode

    def __enter__(self) -> "MailProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
