"""The static passdb (PasswordDatabase.Static; Dovecot's ``passdb-static.c``).

Owns: parsing ``args = "key=value key=value ..."`` exactly as passdb_template_build()
does (split at spaces, no quoting; a key without ``=`` has an empty value), ``password=``
(scheme PLAIN unless it has a ``{SCHEME}`` prefix), ``nopassword``, and every other key
as an extra field. Values are %-expanded per lookup; unknown variables are rejected when
the chain is built.
"""

from __future__ import annotations

from .base import LookupState, PassdbConfigError, PassdbEntry
from .variables import UnknownVariable, check

__all__ = ["StaticPassdb", "parse_template"]

STATIC_PASS_SCHEME = "PLAIN"


def parse_template(args: str) -> list[tuple[str, str]]:
    """passdb_template_build(): ``key=value`` pairs separated by spaces, in order."""
    pairs: list[tuple[str, str]] = []
    for item in args.split():
        key, _eq, value = item.partition("=")
        if not key:
            raise PassdbConfigError(
                f"invalid static args '{args}': key must not be empty ('{item}')")
        try:
            check(value)
        except UnknownVariable as e:
            raise PassdbConfigError(f"{key}: {e}") from None
        pairs.append((key, value))
    return pairs


class StaticPassdb:
    """Every user exists; the password (if any) and the fields come from the args."""

    driver = "static"
    cache_key: str | None = None       # nothing to save: Dovecot does not cache it either

    def __init__(self, args: str, *, master: bool = False, source: str = "") -> None:
        self.source = source
        self.master = master
        pairs = parse_template(args)
        self._password: str | None = None
        for i, (key, value) in enumerate(pairs):
            if key == "password":            # passdb_template_remove(): the first one
                self._password = value
                del pairs[i]
                break
        self._fields = tuple(pairs)

    def __repr__(self) -> str:
        return f"StaticPassdb(source={self.source!r}, master={self.master})"

    async def lookup(self, state: LookupState) -> PassdbEntry:
        pairs = list(self._fields)
        if self._password is not None:
            # set after the other fields, as static_save_fields() does
            pairs.append(("password", self._password))
        return PassdbEntry(state.expand_fields(pairs), default_scheme=STATIC_PASS_SCHEME)

    async def check(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None
