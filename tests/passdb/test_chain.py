"""The passdb chain: order and result rules, extra-field side effects, master users,
user name handling, redaction, and not blocking the Trio thread."""

from __future__ import annotations

import time

import pytest
import trio

from mailproxy.passdb import (AuthOutcome, PassdbConfigError, PassdbResult, PassdbSpec,
                              build_chain, routing_decision, schemes)

USERS = (
    "alice:{PLAIN}alicepw::::::proxy=y host=10.0.0.1 tag=first\n"
    "bob:{PLAIN}bobpw::::::nologin reason=Moved_away host=10.9.9.9 nodelay\n"
    "carol:{PLAIN}carolpw::::::allow_nets=10.0.0.0/8,192.0.2.0/24 proxy=y host=h\n"
    "dan:{PLAIN}danpw::::::allow_nets=10.0.0.0/8\n"
    "erin:{PLAIN}erinpw::::::user=Erin.Smith@Example.com\n"
    "frank:{PLAIN}frankpw::::::username=francis\n"
    "gina@old.example:{PLAIN}ginapw::::::domain=new.example\n"
    "hank:{PLAIN}hankpw::::::fail\n"
    "ivan:{PLAIN}ivanpw::::::delay_until=99999999999\n"
    "judy:{PLAIN}judypw::::::delay_until=1+5 x=1\n"
    "kim:::::::nopassword proxy=y host=k\n"
    "lee:{PLAIN}leepw::::::nopassword\n"
)
SECOND = (
    "alice:{PLAIN}otherpw::::::proxy=y host=10.0.0.2 second=yes\n"
    "dan:{PLAIN}danpw::::::host=fallback\n"
    "zed:{PLAIN}zedpw::::::host=z\n"
)


@pytest.fixture
def chain(chain_of):
    return chain_of(("passwd-file", "users"), ("passwd-file", "second"),
                    files={"users": USERS, "second": SECOND})


# --- order and result rules --------------------------------------------------------------

async def test_first_match_wins(chain, req) -> None:
    res = await chain.authenticate(req("alice", "alicepw"))
    assert res.outcome is AuthOutcome.OK
    assert res.fields == (("proxy", "y"), ("host", "10.0.0.1"), ("tag", "first"))


async def test_failure_continues_and_rolls_back_fields(chain, req) -> None:
    res = await chain.authenticate(req("alice", "otherpw"))
    assert res.outcome is AuthOutcome.OK
    # the first passdb's fields (tag=first) were rolled back when its password failed
    assert res.fields == (("proxy", "y"), ("host", "10.0.0.2"), ("second", "yes"))
    assert (await chain.authenticate(req("zed", "zedpw"))).outcome is AuthOutcome.OK


async def test_wrong_password_refused(chain, req) -> None:
    res = await chain.authenticate(req("alice", "wrong"))
    assert res.outcome is AuthOutcome.FAILED
    assert res.fields == ()
    assert res.detail == "Password mismatch"
    assert (await chain.authenticate(req("alice", ""))).outcome is AuthOutcome.FAILED


async def test_unknown_user(chain, req) -> None:
    res = await chain.authenticate(req("nobody", "x"))
    assert res.outcome is AuthOutcome.NOUSER
    assert (await chain.authenticate(req("nobody", None))).outcome is AuthOutcome.NOUSER


async def test_tempfail(chain_of, req, tmp_path) -> None:
    (tmp_path / "broken").mkdir()                 # reading it fails: internal failure
    files = {"users": "alice:{PLAIN}pw::::::host=a\n"}
    # temp failure then success: success
    ok = chain_of(("passwd-file", "broken"), ("passwd-file", "users"), files=files)
    assert (await ok.authenticate(req("alice", "pw"))).outcome is AuthOutcome.OK
    # temp failure then a plain failure: TEMPFAIL (the broken one may have had it)
    res = await ok.authenticate(req("alice", "bad"))
    assert res.outcome is AuthOutcome.TEMPFAIL
    assert "broken" in res.detail
    assert (await ok.authenticate(req("nobody", "x"))).outcome is AuthOutcome.TEMPFAIL
    # success before the broken one: never reached
    first = chain_of(("passwd-file", "users"), ("passwd-file", "broken"), files=files)
    assert (await first.authenticate(req("alice", "pw"))).outcome is AuthOutcome.OK
    assert (await first.authenticate(req("alice", "x"))).outcome is AuthOutcome.TEMPFAIL
    only = chain_of(("passwd-file", "broken"))
    assert (await only.authenticate(req("alice", "pw"))).outcome is AuthOutcome.TEMPFAIL


# --- fields with side effects -----------------------------------------------------------

async def test_nologin_reason_nodelay(chain, req) -> None:
    res = await chain.authenticate(req("bob", "bobpw"))
    assert res.outcome is AuthOutcome.OK            # nologin is the login process's job
    f = dict(res.fields)
    assert "nologin" in f and "nodelay" in f
    assert res.reason == "Moved_away"


async def test_allow_nets(chain, req) -> None:
    assert (await chain.authenticate(req("carol", "carolpw"))).outcome is AuthOutcome.OK
    assert (await chain.authenticate(
        req("carol", "carolpw", remote_ip="10.1.2.3"))).outcome is AuthOutcome.OK
    assert (await chain.authenticate(
        req("carol", "carolpw", remote_ip="::ffff:10.1.2.3"))).outcome is AuthOutcome.OK
    refused = await chain.authenticate(req("carol", "carolpw", remote_ip="198.51.100.1"))
    assert refused.outcome is AuthOutcome.FAILED     # as if a wrong password was given
    assert "not in allowed networks" in refused.detail
    # a refused passdb continues to the next one, without its fields
    res = await chain.authenticate(req("dan", "danpw"))
    assert res.outcome is AuthOutcome.OK and res.fields == (("host", "fallback"),)


async def test_allow_nets_local_keyword(chain_of, req) -> None:
    chain = chain_of(("static", "password=test allow_nets=local,127.0.0.1/32"))
    assert (await chain.authenticate(req("u", "test", remote_ip=""))).outcome is \
        AuthOutcome.OK
    assert (await chain.authenticate(req("u", "test", remote_ip="127.0.0.1"))).outcome is \
        AuthOutcome.OK
    assert (await chain.authenticate(req("u", "test", remote_ip="127.0.0.2"))).outcome is \
        AuthOutcome.FAILED
    v6 = chain_of(("static", "password=test allow_nets=::1,2001:db8::/32"))
    assert (await v6.authenticate(req("u", "test", remote_ip="2001:db8::5"))).outcome is \
        AuthOutcome.OK


async def test_user_rewriting(chain, req) -> None:
    assert (await chain.authenticate(req("erin", "erinpw"))).user == "Erin.Smith@Example.com"
    assert (await chain.authenticate(req("frank", "frankpw"))).user == "francis"
    res = await chain.authenticate(req("gina@old.example", "ginapw"))
    assert res.user == "gina@new.example"
    decision = routing_decision(res, req("gina@old.example", "ginapw"))
    assert decision.destuser == "gina@new.example"


async def test_fail_and_delay_until(chain, req) -> None:
    assert (await chain.authenticate(req("hank", "hankpw"))).outcome is AuthOutcome.FAILED
    far = await chain.authenticate(req("ivan", "ivanpw"))
    assert far.outcome is AuthOutcome.FAILED
    assert "too much in the future" in far.detail
    past = await chain.authenticate(req("judy", "judypw"))
    assert past.outcome is AuthOutcome.OK and ("delay_until", "1+5") in past.fields


async def test_delay_until_in_range(chain_of, req) -> None:
    soon = int(time.time()) + 60
    chain = chain_of(("static", f"password=p delay_until={soon}+10"))
    res = await chain.authenticate(req("u", "p"))
    assert res.outcome is AuthOutcome.OK
    d = routing_decision(res, req("u", "p"), now=soon - 60)
    assert d.delay_until is not None and soon <= d.delay_until < soon + 10


async def test_nopassword(chain, req) -> None:
    res = await chain.authenticate(req("kim", "anything at all"))
    assert res.outcome is AuthOutcome.OK
    assert res.fields == (("proxy", "y"), ("host", "k"))
    # nopassword with a non-empty password is ignored (Dovecot logs an error)
    assert (await chain.authenticate(req("lee", "leepw"))).outcome is AuthOutcome.OK
    assert (await chain.authenticate(req("lee", "x"))).outcome is AuthOutcome.FAILED


async def test_protected_and_remove_suffixes(chain_of, req) -> None:
    chain = chain_of(("static", "password=p a=1 a:protected=2 b:protected=3 c=4 c:remove"))
    res = await chain.authenticate(req("u", "p"))
    assert res.fields == (("a", "1"), ("b", "3"))


async def test_passdb_import(chain_of, req) -> None:
    chain = chain_of(("passwd-file", "scheme=PLAIN users"),
                     files={"users": "u:p::::::passdb_import=host=h1\tport=1143\n"})
    res = await chain.authenticate(req("u", "p"))
    assert dict(res.fields) == {"host": "h1", "port": "1143"}


async def test_forward_fields_from_trusted_peer(chain_of, req) -> None:
    chain = chain_of(("static", "password=p seen=%{passdb:forward_a} forward_b=mine"))
    res = await chain.authenticate(req("u", "p", forward_fields=(("a", "1"), ("b", "2"))))
    assert res.fields == (("forward_a", "1"), ("forward_b", "mine"), ("seen", "1"))
    # kept even when the passdb fails (they came before any passdb)
    bad = await chain.authenticate(req("u", "x", forward_fields=(("a", "1"),)))
    assert bad.fields == (("forward_a", "1"),)


async def test_noauthenticate(chain_of, req) -> None:
    chain = chain_of(("static", "noauthenticate host=from-first"),
                     ("static", "password=p proxy=y"))
    res = await chain.authenticate(req("u", "p"))
    assert res.outcome is AuthOutcome.OK
    assert dict(res.fields) == {"host": "from-first", "proxy": "y"}
    assert (await chain.authenticate(req("u", "x"))).outcome is AuthOutcome.FAILED
    last = chain_of(("static", "password=p"), ("static", "noauthenticate"))
    assert (await last.authenticate(req("u", "x"))).outcome is AuthOutcome.TEMPFAIL


# --- user names ------------------------------------------------------------------------

async def test_username_format_and_chars(chain, chain_of, req) -> None:
    # Dovecot's defaults: auth_username_format = %Lu, auth_username_chars = a-zA-Z0-9.-_@
    res = await chain.authenticate(req("ALICE", "alicepw"))
    assert res.outcome is AuthOutcome.OK and res.user == "alice"
    bad = await chain.authenticate(req("al+ice", "alicepw"))
    assert bad.outcome is AuthOutcome.FAILED and "0x2b" in bad.detail
    assert (await chain.authenticate(req("", "x"))).outcome is AuthOutcome.FAILED
    relaxed = chain_of(("passwd-file", "users"), username_chars=None, username_format="")
    assert (await relaxed.authenticate(req("ALICE", "alicepw"))).outcome is \
        AuthOutcome.NOUSER
    plus = chain_of(("static", "password=p"), username_chars=None)
    assert (await plus.authenticate(req("a+b", "p"))).user == "a+b"


async def test_password_with_illegal_chars(chain, req) -> None:
    res = await chain.authenticate(req("alice", "alice\tpw"))
    assert res.outcome is AuthOutcome.FAILED


# --- master users ----------------------------------------------------------------------

MASTERS = "admin:{PLAIN}adminpw\nstrict:{PLAIN}strictpw::::::pass=yes mfield=1\n"


@pytest.fixture
def master_chain(chain_of):
    return chain_of(("passwd-file", "masters", True), ("passwd-file", "users"),
                    files={"masters": MASTERS, "users": USERS})


async def test_master_login(master_chain, req) -> None:
    request = req("alice", "adminpw", master_user="admin")
    res = await master_chain.authenticate(request)
    assert res.outcome is AuthOutcome.OK
    assert res.user == "alice" and res.master_user == "admin"
    assert dict(res.fields)["host"] == "10.0.0.1"       # the login user's routing
    d = routing_decision(res, request)
    assert d.destuser == "alice" and d.master == "admin"
    assert d.password is not None and d.password.reveal() == "adminpw"


async def test_master_wrong_password_or_unknown_master(master_chain, req) -> None:
    assert (await master_chain.authenticate(
        req("alice", "alicepw", master_user="admin"))).outcome is AuthOutcome.FAILED
    assert (await master_chain.authenticate(
        req("alice", "x", master_user="nosuch"))).outcome is AuthOutcome.FAILED
    # master users cannot log in as themselves through the normal passdbs
    assert (await master_chain.authenticate(req("admin", "adminpw"))).outcome is \
        AuthOutcome.NOUSER


async def test_master_pass_yes_requires_the_user(master_chain, req) -> None:
    ok = await master_chain.authenticate(req("alice", "strictpw", master_user="strict"))
    assert ok.outcome is AuthOutcome.OK and ok.master_user == "strict"
    assert "pass" not in dict(ok.fields)              # a setting, not a password to send
    assert dict(ok.fields)["mfield"] == "1"
    missing = await master_chain.authenticate(req("ghost", "strictpw", master_user="strict"))
    assert missing.outcome is AuthOutcome.FAILED
    # without pass=yes the master login stands even for a user no passdb knows
    loose = await master_chain.authenticate(req("ghost", "adminpw", master_user="admin"))
    assert loose.outcome is AuthOutcome.OK and loose.user == "ghost"
    assert loose.fields == ()


async def test_master_skips_the_users_password(master_chain, req) -> None:
    # the login user's own password (alicepw) is not checked in a master login
    res = await master_chain.authenticate(req("bob", "adminpw", master_user="admin"))
    assert res.outcome is AuthOutcome.OK and res.user == "bob"
    assert "nologin" in dict(res.fields)


async def test_master_without_master_passdbs(chain, req) -> None:
    res = await chain.authenticate(req("alice", "alicepw", master_user="admin"))
    assert res.outcome is AuthOutcome.FAILED
    assert "no master passdbs" in res.detail
    # user*user is a normal login
    same = await chain.authenticate(req("alice", "alicepw", master_user="alice"))
    assert same.outcome is AuthOutcome.OK and same.master_user is None


async def test_master_variables(chain_of, req) -> None:
    chain = chain_of(("static", "password=%{login_user}-m who=%u target=%{login_user}", True),
                     ("static", "nopassword who2=%u m=%{master_user} a=%{auth_user}"))
    res = await chain.authenticate(req("alice", "alice-m", master_user="boss"))
    assert res.outcome is AuthOutcome.OK
    assert dict(res.fields) == {"who": "boss", "target": "alice", "who2": "alice",
                                "m": "boss", "a": "boss"}


# --- build_chain -----------------------------------------------------------------------

def test_build_chain_errors(tmp_path) -> None:
    with pytest.raises(PassdbConfigError) as e:
        build_chain([PassdbSpec("sql", "/etc/x.conf", False, "a.toml:3")], base_dir=tmp_path)
    assert e.value.message == "driver 'sql' is not supported yet"
    assert e.value.source == "a.toml:3"
    with pytest.raises(PassdbConfigError, match="driver 'ldap' is not supported yet"):
        build_chain([PassdbSpec("ldap", "x", False, "")], base_dir=tmp_path)
    with pytest.raises(PassdbConfigError, match="unknown passdb driver 'pam'"):
        build_chain([PassdbSpec("pam", "", False, "")], base_dir=tmp_path)
    with pytest.raises(PassdbConfigError, match="Unknown setting: bogus") as e:
        build_chain([PassdbSpec("static", "", False, "a:1"),
                     PassdbSpec("passwd-file", "bogus=1 /x", False, "a:2")], base_dir=tmp_path)
    assert e.value.source == "a:2"
    with pytest.raises(PassdbConfigError, match="without master"):
        build_chain([PassdbSpec("static", "", True, "a:1")], base_dir=tmp_path)


# --- secrets never shown ----------------------------------------------------------------

async def test_no_password_in_repr(chain_of, req) -> None:
    secret = "S3cr3t-Pa55"
    chain = chain_of(("passwd-file", "masters", True), ("passwd-file", "users"), files={
        "masters": f"boss:{{PLAIN}}{secret}\n",
        "users": f"alice:{{PLAIN}}{secret}::::::proxy=y host=h pass={secret}\n"})
    request = req("alice", secret)
    objects: list[object] = [request, chain, chain.passdbs[0], chain.passdbs[1]]
    for r in (request, req("alice", secret, master_user="boss"), req("alice", "bad")):
        res = await chain.authenticate(r)
        objects += [res, res.redacted_fields()]
        if res.outcome is AuthOutcome.OK:
            objects.append(routing_decision(res, r))
    state_entry = await chain.passdbs[1].lookup(_state(request))
    objects.append(state_entry)
    for obj in objects:
        assert secret not in repr(obj), obj
        assert secret not in str(obj), obj
    # the value is still there for the backend login
    res = await chain.authenticate(request)
    assert dict(res.fields)["pass"] == secret


def _state(request):
    from mailproxy.passdb import LookupState
    return LookupState(request=request, user=request.user, original_user=request.user,
                       login_user=None, master_user=None, fields={}, passdb_id=2)


def test_result_repr_redacts_pass_field() -> None:
    res = PassdbResult(AuthOutcome.OK, "u", (("pass", "zzz"), ("host", "h")))
    assert "zzz" not in repr(res) and "'host', 'h'" in repr(res)


# --- the Trio thread is never blocked by a hash --------------------------------------------

async def test_expensive_hash_runs_off_the_trio_thread(chain_of, req) -> None:
    slow = schemes.generate("BLF-CRYPT", "pw", rounds=12)       # ~0.2 s of bcrypt
    chain = chain_of(("static", f"password={slow}"))
    gaps: list[float] = []
    done = trio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await trio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        started = time.monotonic()
        results = []

        async def login(pw: str) -> None:
            results.append((await chain.authenticate(req("u", pw))).outcome)

        async with trio.open_nursery() as logins:
            logins.start_soon(login, "pw")
            logins.start_soon(login, "wrong")
        elapsed = time.monotonic() - started
        done.set()
    assert sorted(r.value for r in results) == ["failed", "ok"]
    assert elapsed > 0.1                       # the hashing did take time...
    assert max(gaps) < 0.08                    # ...but the event loop kept running
