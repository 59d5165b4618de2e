"""The auth cache (Authentication.Caching): the store, and the chain's use of it with the
wiki's password-change scenarios. The cached passdb is a real passwd-file passdb that
declares a cache key (as sql/ldap will)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mailproxy.passdb import AuthCache, AuthOutcome, PassdbChain
from mailproxy.passdb.cache import cache_key
from mailproxy.passdb.passwd_file import PasswdFilePassdb
from mailproxy.passdb.variables import auth_table


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the store ---------------------------------------------------------------------------

def test_lru_and_ttl() -> None:
    clock = Clock()
    cache = AuthCache(size=2, ttl=60, negative_ttl=10, clock=clock)
    cache.insert("a", "{PLAIN}x", (("host", "h"),), last_success=True)
    cache.insert("b", "{PLAIN}y", (), last_success=False)
    assert cache.lookup("a") is not None               # a is now the most recent
    cache.insert("c", None, (), last_success=True)
    assert len(cache) == 2 and cache.lookup("b") is None    # b was least recently used
    hit = cache.lookup("a")
    assert hit is not None and not hit.expired and hit.node.fields == (("host", "h"),)
    clock.now += 61
    hit = cache.lookup("a")
    assert hit is not None and hit.expired and hit.neg_expired
    assert cache.hits == 2 and cache.misses == 2


def test_negative_entries() -> None:
    clock = Clock()
    cache = AuthCache(size=10, ttl=3600, negative_ttl=5, clock=clock)
    cache.insert_negative("n")
    hit = cache.lookup("n")
    assert hit is not None and hit.node.negative and not hit.expired
    clock.now += 6
    assert cache.lookup("n").expired                      # type: ignore[union-attr]
    off = AuthCache(size=10, ttl=3600, negative_ttl=0)
    off.insert_negative("n")
    assert off.lookup("n") is None


def test_disabled() -> None:
    for cache in (AuthCache(0, 60, 60), AuthCache(10, 0, 60)):
        assert not cache.enabled
        cache.insert("a", "{PLAIN}x", (), last_success=True)
        assert cache.lookup("a") is None
    with pytest.raises(ValueError):
        AuthCache(-1, 1, 1)


def test_repr_hides_password() -> None:
    cache = AuthCache(size=10, ttl=60, negative_ttl=60)
    cache.insert("a", "{PLAIN}TopSecret", (("pass", "TopSecret"),), last_success=True)
    hit = cache.lookup("a")
    assert hit is not None and "TopSecret" not in repr(hit) and "TopSecret" not in repr(cache)


def test_cache_key() -> None:
    table = auth_table(user="joe@x", service="imap", remote_ip="192.0.2.1")
    assert cache_key(3, None, "%u", table) == "P3\tjoe@x"
    assert cache_key(3, "boss", "%u%r", table) == "P3+boss\tjoe@x192.0.2.1"
    assert cache_key(1, None, "%{nosuch}", table) == "P1\tUNSUPPORTED_VARIABLE_nosuch"
    tabbed = auth_table(user="a\tb", service="imap")
    assert "\t" not in cache_key(1, None, "%u", tabbed).split("\t", 1)[1]


# --- the chain with a cache ---------------------------------------------------------------

class CachedPasswdFile(PasswdFilePassdb):
    """A passwd-file passdb with a cache key, counting real lookups."""

    cache_key = "%u"

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.lookups = 0

    async def lookup(self, state):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return await super().lookup(state)


@pytest.fixture
def setup(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "users"
    path.write_text("alice:{PLAIN}X::::::host=h1 allow_nets=192.0.2.0/24\n")
    clock = Clock()
    cache = AuthCache(size=100, ttl=3600, negative_ttl=60, clock=clock)
    db = CachedPasswdFile("users", base_dir=tmp_path)
    chain = PassdbChain([db], cache=cache)
    return path, clock, db, chain


async def test_positive_hit_still_checks_the_password(setup, req) -> None:
    path, clock, db, chain = setup
    assert (await chain.authenticate(req("alice", "X"))).outcome is AuthOutcome.OK
    assert db.lookups == 1
    res = await chain.authenticate(req("alice", "X"))
    assert res.outcome is AuthOutcome.OK and db.lookups == 1          # from the cache
    assert dict(res.fields) == {"host": "h1", "allow_nets": "192.0.2.0/24"}
    # cached fields are applied again: allow_nets still refuses other addresses
    refused = await chain.authenticate(req("alice", "X", remote_ip="198.51.100.1"))
    assert refused.outcome is AuthOutcome.FAILED and db.lookups == 1


async def test_password_change_scenarios(setup, req) -> None:
    """The three scenarios of Authentication.Caching."""
    path, clock, db, chain = setup
    # Normal: X works and is cached; the password changes to Y; Y mismatches the cache,
    # but the last login succeeded, so the passdb is asked again: Y works.
    assert (await chain.authenticate(req("alice", "X"))).outcome is AuthOutcome.OK
    path.write_text("alice:{PLAIN}Y::::::host=h2 allow_nets=192.0.2.0/24\n")
    res = await chain.authenticate(req("alice", "Y"))
    assert res.outcome is AuthOutcome.OK and db.lookups == 2
    assert dict(res.fields)["host"] == "h2"

    # Old cached password: the cache has Y; changed to Z; Y still works from the cache.
    path.write_text("alice:{PLAIN}Z\n")
    assert (await chain.authenticate(req("alice", "Y"))).outcome is AuthOutcome.OK
    assert db.lookups == 2

    # Early change: W mismatches after a success -> looked up (still Z): fails and the
    # entry remembers the failure; once the password really is W, the cache still says
    # no without asking, until the TTL expires.
    assert (await chain.authenticate(req("alice", "W"))).outcome is AuthOutcome.FAILED
    assert db.lookups == 3
    path.write_text("alice:{PLAIN}W\n")
    assert (await chain.authenticate(req("alice", "W"))).outcome is AuthOutcome.FAILED
    assert db.lookups == 3
    clock.now += 3601
    assert (await chain.authenticate(req("alice", "W"))).outcome is AuthOutcome.OK
    assert db.lookups == 4


async def test_negative_cache(setup, req) -> None:
    path, clock, db, chain = setup
    assert (await chain.authenticate(req("bob", "x"))).outcome is AuthOutcome.NOUSER
    path.write_text("bob:{PLAIN}x\n")
    assert (await chain.authenticate(req("bob", "x"))).outcome is AuthOutcome.NOUSER
    assert db.lookups == 1
    clock.now += 61
    assert (await chain.authenticate(req("bob", "x"))).outcome is AuthOutcome.OK
    assert db.lookups == 2


async def test_expired_entry_used_when_the_database_fails(setup, req, tmp_path) -> None:
    path, clock, db, chain = setup
    assert (await chain.authenticate(req("alice", "X"))).outcome is AuthOutcome.OK
    clock.now += 7200                                   # expired
    path.unlink()
    path.mkdir()                                        # reading it now fails
    res = await chain.authenticate(req("alice", "X"))
    assert res.outcome is AuthOutcome.OK and dict(res.fields)["host"] == "h1"
    # a mismatch after a successful login could be a changed password: Dovecot cannot
    # tell while the database is down, so it stays a temporary failure
    assert (await chain.authenticate(req("alice", "bad"))).outcome is AuthOutcome.TEMPFAIL
    # a user never cached: the failure shows
    assert (await chain.authenticate(req("carol", "x"))).outcome is AuthOutcome.TEMPFAIL
    shutil.rmtree(path)


async def test_cache_key_separates_master_logins(tmp_path, req) -> None:
    (tmp_path / "users").write_text("alice:{PLAIN}X::::::host=h1\n")
    (tmp_path / "masters").write_text("boss:{PLAIN}B\n")
    cache = AuthCache(size=100, ttl=3600, negative_ttl=60)
    users = CachedPasswdFile("users", base_dir=tmp_path)
    masters = PasswdFilePassdb("masters", base_dir=tmp_path, master=True)
    chain = PassdbChain([masters, users], cache=cache)
    assert (await chain.authenticate(req("alice", "B", master_user="boss"))).outcome is \
        AuthOutcome.OK
    # the master login's entry (no password check) must not let anyone in as alice
    assert (await chain.authenticate(req("alice", "B"))).outcome is AuthOutcome.FAILED
    assert (await chain.authenticate(req("alice", "X"))).outcome is AuthOutcome.OK
