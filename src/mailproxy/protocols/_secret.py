"""``Secret``: a password or token that never shows up in a repr, log line or traceback.

Owns: the redacting wrapper only. Imports nothing from the rest of the package.
(cf. imap-types ``Secret<T>``, whose Debug impl is redacted.)
"""

from __future__ import annotations

import hmac

__all__ = ["Secret"]


class Secret:
    """A secret value (``str`` or ``bytes``).

    ``repr()`` and ``str()`` give ``Secret('***')``; :meth:`reveal` gives the value.
    Instances are immutable, hashable and compare by value in constant time.
    """

    __slots__ = ("_value",)

    _value: str | bytes

    def __init__(self, value: str | bytes) -> None:
        if not isinstance(value, (str, bytes)):
            raise TypeError(f"Secret value must be str or bytes, not {type(value).__name__}")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str | bytes:
        """Return the wrapped value."""
        return self._value

    def reveal_bytes(self, encoding: str = "utf-8") -> bytes:
        """Return the value as bytes (``str`` values are encoded with *encoding*,
        ``surrogateescape`` so that bytes decoded that way round-trip)."""
        v = self._value
        return v if isinstance(v, bytes) else v.encode(encoding, "surrogateescape")

    def reveal_str(self, encoding: str = "utf-8") -> str:
        """Return the value as str (``bytes`` values are decoded with *encoding*,
        ``surrogateescape``)."""
        v = self._value
        return v if isinstance(v, str) else v.decode(encoding, "surrogateescape")

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Secret is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        a, b = self._value, other._value
        if type(a) is not type(b):
            return False
        if isinstance(a, str):
            a = a.encode("utf-8", "surrogatepass")
            b = b.encode("utf-8", "surrogatepass")  # type: ignore[union-attr]
        return hmac.compare_digest(a, b)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> tuple[type[Secret], tuple[str | bytes]]:
        return (Secret, (self._value,))
