"""Throw-away TLS certificates for tests, made with trustme (no network, no openssl CLI).

One CA signs two server certificates: the right one (names ``localhost``, ``127.0.0.1``
and ``::1``, i.e. every way a test reaches a loopback server) and a wrong one
(``wrong.example``) so tests can check that ``ssl=yes`` refuses a backend whose name does
not match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TLSFiles", "make_tls_files"]


@dataclass(frozen=True)
class TLSFiles:
    """PEM file paths. ``cert`` holds the leaf certificate; ``key`` its private key."""

    ca: Path
    cert: Path
    key: Path
    wrong_cert: Path
    wrong_key: Path


def make_tls_files(directory: os.PathLike[str] | str) -> TLSFiles:
    """Write a fresh CA and two server certificates as PEM files into ``directory``."""
    import trustme  # imported here so that importing tests.support needs no trustme

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    good = ca.issue_cert("localhost", "127.0.0.1", "::1")
    wrong = ca.issue_cert("wrong.example")
    files = TLSFiles(
        ca=d / "ca.pem",
        cert=d / "cert.pem",
        key=d / "key.pem",
        wrong_cert=d / "wrong-cert.pem",
        wrong_key=d / "wrong-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    # The leaf alone: servers that want a chain get it from the CA file; the CA signed the
    # leaf directly, so no intermediates exist.
    good.cert_chain_pems[0].write_to_path(str(files.cert))
    good.private_key_pem.write_to_path(str(files.key))
    wrong.cert_chain_pems[0].write_to_path(str(files.wrong_cert))
    wrong.private_key_pem.write_to_path(str(files.wrong_key))
    for p in (files.key, files.wrong_key):
        p.chmod(0o600)
    return files
