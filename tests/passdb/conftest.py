"""Helpers for the passdb tests: requests, chains from real files in tmp_path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mailproxy.passdb import LookupRequest, PassdbChain, PassdbSpec, build_chain
from mailproxy.protocols._secret import Secret


def make_request(user: str, password: str | None = None, **kw: Any) -> LookupRequest:
    base: dict[str, Any] = dict(protocol="imap", remote_ip="192.0.2.7", remote_port=50000,
                                local_ip="10.0.0.1", local_port=143, session_id="sess1")
    base.update(kw)
    return LookupRequest(user=user, password=None if password is None else Secret(password),
                         **base)


@pytest.fixture
def req() -> Callable[..., LookupRequest]:
    return make_request


@pytest.fixture
def chain_of(tmp_path: Path) -> Callable[..., PassdbChain]:
    """chain_of(("passwd-file", "users"), ("static", "nopassword", True), files={...})"""

    def make(*specs: tuple[Any, ...], files: dict[str, str] | None = None,
             **options: Any) -> PassdbChain:
        for name, text in (files or {}).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text, encoding="utf-8")
        built = [PassdbSpec(s[0], s[1], bool(s[2]) if len(s) > 2 else False, f"test:{i + 1}")
                 for i, s in enumerate(specs)]
        return build_chain(built, base_dir=tmp_path, **options)

    return make
