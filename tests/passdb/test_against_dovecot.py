"""Differential tests: the same passwd-files through Dovecot 2.3 (``doveadm auth test``
against a private instance) and through our chain must give the same verdict, user and
extra fields. Skipped (naming what is missing) when Dovecot is not installed."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailproxy.passdb import AuthOutcome, PassdbChain, schemes
from mailproxy.passdb.passwd_file import PasswdFilePassdb

# Fields Dovecot keeps hidden from the auth reply (auth_request_set_field()).
HIDDEN = {"user", "username", "domain", "login_user", "allow_nets", "fail", "delay_until",
          "allow_real_nets"}

TEMPLATES = (
    "a=%u b=%Un c=%2.1n d=%{passdb:a} e=%{md5:user} f=%r/%l/%s g=%{if;%s;eq;imap;yes;no} "
    "h=%Hu i=%256Nu j=%{sha1;truncate=12:user} k=%0.-3n l=%-2u m=%04d n=%{auth_user} "
    "o=%{domain_first} p=%{passdb:zz:dflt} q=%E{user} r=%{sha256;rounds=2,format=base64:user} "
    "s=%1.04n t=%Xa u=%Mu v=%Du w=%{passdb:a}x x=%{rport}:%{lport}:%{real_rip} "
    "y=%{orig_username}@%{orig_domain} z=%{if;%{passdb:a};*;*@*;at;none} "
    "aa=%{session} ab=%m ac=%{mech} ad=%c ae=%{sha512;salt=%n:user} af=%Ru ag=%{domain_last}"
)

USERS = {"alice@example.com": "alicepw", "bob": "bobpw", "carol": "carolpw", "dave": "davepw",
         "gina": "ginapw"}
USER_FIELDS = {
    "alice@example.com": TEMPLATES,
    "bob": "allow_nets=10.0.0.0/8,192.0.2.0/24 host=b1",
    "carol": "nologin reason=Moved host=c1 nodelay proxy_maybe",
    "dave": "user=David@Example.COM a=%u b=%{passdb:user}",
    "gina": "x=1 x:protected=2 y:protected=3 z=4 z:remove",
}


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    # Dovecot's auth process runs as an unprivileged user: it must be able to read this.
    d = Path(tempfile.mkdtemp(prefix="mailproxy-passdb-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()


@pytest.fixture
def setup(dovecot_factory, shared_dir: Path):  # type: ignore[no-untyped-def]
    md5 = schemes.generate("MD5-CRYPT", "frankpw").split("}", 1)[1]
    second = shared_dir / "second"
    second.write_text(
        f"alice@example.com:{schemes.generate('SHA512-CRYPT', 'otherpw')}::::::host=second\n"
        f"bob:{schemes.generate('BLF-CRYPT', 'bobpw')}::::::host=b2\n"
        f"eve:{schemes.generate('PBKDF2', 'evepw')}::::::host=e proxy\n"
        f"frank:{md5}::::::x=1\n"
        f"hank:{schemes.generate('ARGON2ID', 'hankpw')}::::::host=h\n"
    )
    second.chmod(0o644)
    masters = shared_dir / "masters"
    masters.write_text("master:{PLAIN}masterpw::::::pass=yes\n")
    masters.chmod(0o644)
    dovecot = dovecot_factory(
        USERS, master_users={"master": "masterpw"}, user_fields=USER_FIELDS,
        auth_failure_delay=0,
        extra_config=f"passdb {{\n  driver = passwd-file\n  args = {second}\n}}\n")
    assert dovecot.dir is not None
    ours = PassdbChain([
        PasswdFilePassdb(str(masters), master=True),
        PasswdFilePassdb(str(dovecot.dir / "users")),
        PasswdFilePassdb(str(second)),
    ])
    return dovecot, ours


def dovecot_auth(dovecot, login: str, password: str, rip: str):  # type: ignore[no-untyped-def]
    out = dovecot.doveadm("auth", "test", "-x", "service=imap", "-x", f"rip={rip}",
                          "-x", "lip=10.0.0.1", "-x", "lport=143", "-x", "rport=50000",
                          "-x", "session=sess1", "-x", "no-penalty=yes", login, password,
                          check=False)
    lines = out.stdout.splitlines()
    assert lines and lines[0].startswith("passdb: "), (out.stdout, out.stderr)
    ok = lines[0].endswith("auth succeeded")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        if line.startswith("  "):
            key, _eq, value = line.strip().partition("=")
            fields[key] = value
    return ok, fields


CASES = [
    ("alice@example.com", "alicepw", "192.0.2.7"),
    ("Alice@Example.com", "alicepw", "192.0.2.7"),
    ("alice@example.com", "otherpw", "192.0.2.7"),
    ("alice@example.com", "wrong", "192.0.2.7"),
    ("bob", "bobpw", "192.0.2.7"),
    ("bob", "bobpw", "198.51.100.1"),
    ("carol", "carolpw", "192.0.2.7"),
    ("dave", "davepw", "192.0.2.7"),
    ("eve", "evepw", "192.0.2.7"),
    ("eve", "evepx", "192.0.2.7"),
    ("frank", "frankpw", "192.0.2.7"),
    ("gina", "ginapw", "192.0.2.7"),
    ("hank", "hankpw", "192.0.2.7"),
    ("nobody", "x", "192.0.2.7"),
    ("bob*master", "masterpw", "192.0.2.7"),
    ("ghost*master", "masterpw", "192.0.2.7"),
    ("bob*master", "bobpw", "192.0.2.7"),
]


async def test_same_answers_as_dovecot(setup, req) -> None:
    dovecot, ours = setup
    mismatches = []
    for login, password, rip in CASES:
        d_ok, d_fields = dovecot_auth(dovecot, login, password, rip)
        user, master = (login.split("*", 1) + [None])[:2]
        res = await ours.authenticate(req(user, password, remote_ip=rip, remote_port=50000,
                                          local_ip="10.0.0.1", local_port=143,
                                          session_id="sess1", master_user=master))
        o_ok = res.outcome is AuthOutcome.OK
        if o_ok != d_ok:
            mismatches.append((login, password, rip, "verdict", d_ok, res))
            continue
        if not d_ok:
            continue
        expected = {k: v for k, v in d_fields.items()
                    if k not in ("user", "original_user", "auth_user")}
        got = {k: v for k, v in res.fields if k not in HIDDEN}
        if d_fields.get("user") != res.user or expected != got:
            mismatches.append((login, password, rip, "fields", d_fields, res.user, got))
    assert not mismatches, "\n".join(map(str, mismatches))

