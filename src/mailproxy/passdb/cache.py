"""The auth cache (Authentication.Caching; Dovecot's ``auth-cache.c``, ``passdb-cache.c``).

Owns: the bounded LRU store of passdb results, positive/negative TTLs, the ``last_success``
flag that makes a password mismatch on a previously successful entry look the user up
again, and Dovecot's cache key (``P<passdb id>[+<master user>]<TAB><expanded cache key>``).

A positive entry keeps the stored password (``{SCHEME}...``), never the client's, and the
extra fields that passdb set: a hit still checks the password the client gave. The logic
that uses the cache lives in base.py (PassdbChain), as it does in auth-request.c.

Dovecot sizes the cache in bytes; here ``size`` counts entries (interface.md
``cache_size``). Time is ``time.monotonic`` unless a clock is given (tests). No trio.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .variables import UnknownVariable, VariableError, VariableTable, expand

__all__ = ["AuthCache", "CacheNode", "CacheHit", "cache_key"]


@dataclass(slots=True, repr=False)
class CacheNode:
    password: str | None                  # stored password with {SCHEME}; None = any
    fields: tuple[tuple[str, str], ...]   # the extra fields the passdb set
    negative: bool                        # the user does not exist
    created: float
    last_success: bool

    def __repr__(self) -> str:
        from .base import _redacted

        return (f"CacheNode(password={'***' if self.password else None}, "
                f"fields={_redacted(self.fields)!r}, negative={self.negative}, "
                f"created={self.created}, last_success={self.last_success})")


@dataclass(frozen=True, slots=True)
class CacheHit:
    node: CacheNode
    expired: bool           # older than its TTL (still usable after an internal failure)
    neg_expired: bool       # older than the negative TTL (then a mismatch looks up again)


class AuthCache:
    """``auth_cache_size`` entries, ``auth_cache_ttl``, ``auth_cache_negative_ttl``."""

    def __init__(self, size: int, ttl: float, negative_ttl: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size < 0 or ttl < 0 or negative_ttl < 0:
            raise ValueError("cache size and TTLs must not be negative")
        self.size = size
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        self._nodes: OrderedDict[str, CacheNode] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        # passdb_cache_init(): a zero size or TTL disables caching.
        return self.size > 0 and self.ttl > 0

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return (f"AuthCache(size={self.size}, ttl={self.ttl}, "
                f"negative_ttl={self.negative_ttl}, entries={len(self._nodes)})")

    def clear(self) -> None:
        """Flush everything (Dovecot does this on SIGHUP)."""
        self._nodes.clear()

    def lookup(self, key: str) -> CacheHit | None:
        """auth_cache_lookup(): the entry and whether it has expired; None = miss."""
        node = self._nodes.get(key)
        if node is None:
            self.misses += 1
            return None
        now = self._clock()
        ttl = self.negative_ttl if node.negative else self.ttl
        expired = node.created < now - ttl
        if expired:
            self.misses += 1
        else:
            self._nodes.move_to_end(key)      # most recently used
            self.hits += 1
        neg_expired = node.created < now - self.negative_ttl
        return CacheHit(node, expired, neg_expired)

    def insert(self, key: str, password: str | None, fields: tuple[tuple[str, str], ...],
               *, last_success: bool) -> None:
        """Cache a found user (``password`` None: the passdb allows any password)."""
        self._put(key, CacheNode(password, tuple(fields), False, self._clock(), last_success))

    def insert_negative(self, key: str) -> None:
        """Cache "no such user" (not at all when the negative TTL is 0)."""
        if self.negative_ttl <= 0:
            return
        self._put(key, CacheNode(None, (), True, self._clock(), False))

    def remove(self, key: str) -> None:
        self._nodes.pop(key, None)

    def _put(self, key: str, node: CacheNode) -> None:
        if not self.enabled:
            return
        self._nodes.pop(key, None)
        self._nodes[key] = node
        while len(self._nodes) > self.size:
            self._nodes.popitem(last=False)    # least recently used


def _tab_escape(value: str) -> str:
    """str_tabescape(): the cache key's parts are separated by tabs."""
    return (value.replace("\001", "\0011").replace("\t", "\001t")
            .replace("\r", "\001r").replace("\n", "\001n"))


def cache_key(passdb_id: int, master_user: str | None, template: str,
              table: VariableTable) -> str:
    """auth_request_expand_cache_key(): ``P<id>[+master]\\t<expanded template>``.

    Unknown variables are tolerated, as in Dovecot (their placeholder text is used).
    """
    try:
        expanded = expand(template, table, escape=_tab_escape)
    except UnknownVariable as e:
        expanded = e.partial
    except VariableError:
        expanded = template
    prefix = f"P{passdb_id}" + (f"+{_tab_escape(master_user)}" if master_user else "")
    return f"{prefix}\t{expanded}"
