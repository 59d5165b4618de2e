"""Secret: a password or token that never shows up in repr()/str() or logs.

Minimal placeholder created by the passdb work because passdb imports it; the protocols/
owner may extend it. API: ``Secret(value)``, ``.reveal()``, redacted ``repr``/``str``.
"""

from __future__ import annotations


class Secret:
    __slots__ = ("_value",)

    def __init__(self, value: str | bytes) -> None:
        self._value = value

    def reveal(self) -> str | bytes:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__
