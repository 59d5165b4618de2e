"""Password schemes against Dovecot's own doveadm.

Two layers:
- fixtures/doveadm_hashes.tsv (committed, made by make_doveadm_fixtures.py): hashes from
  ``doveadm pw`` and doveadm's own verdict for several candidate passwords; always runs.
- live: run ``doveadm pw -s`` now and verify its hash, and hand our generate() output to
  ``doveadm pw -t``; skipped with "doveadm not found" when Dovecot is not installed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from mailproxy.passdb import schemes

FIXTURES = Path(__file__).parent / "fixtures" / "doveadm_hashes.tsv"
USER = "user@example.com"
DOVEADM = shutil.which("doveadm")
needs_doveadm = pytest.mark.skipif(DOVEADM is None, reason="doveadm not found")


def _rows() -> list[tuple[str, str, str, str, str, bool]]:
    rows = []
    for line in FIXTURES.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        label, pw, user, hashed, candidate, verified = line.split("\t")
        rows.append((label, pw, user, hashed, candidate, verified == "1"))
    return rows


ROWS = _rows()


def test_fixture_covers_every_scheme() -> None:
    labels = {r[0].split("/")[0].split(".")[0] for r in ROWS}
    # OTP is the only Dovecot 2.3 scheme we do not implement.
    assert set(schemes.SCHEMES) <= labels | {"CLEAR"}
    assert len(ROWS) > 500
    assert sum(r[5] for r in ROWS) > 150          # plenty of positive verdicts too


@pytest.mark.parametrize(
    "label,password,user,hashed,candidate,verified", ROWS,
    ids=[f"{r[0]}-{i}" for i, r in enumerate(ROWS)])
def test_verify_agrees_with_doveadm(label: str, password: str, user: str, hashed: str,
                                    candidate: str, verified: bool) -> None:
    try:
        ours = schemes.verify(hashed, candidate, user=user)
    except schemes.InvalidHash:
        ours = False        # doveadm refuses these too ("missing length: prefix")
    assert ours is verified


def test_bare_hashes_use_the_default_scheme() -> None:
    # passwd-file's default scheme is CRYPT; a bare $1$ hash is MD5-CRYPT whatever the
    # default (password_get_scheme()).
    by_label = {r[0]: r[3] for r in ROWS if r[1] == "pässwörd"}
    for label in ("SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "DES-CRYPT", "MD5-CRYPT"):
        bare = by_label[label].split("}", 1)[1]
        assert schemes.verify(bare, "pässwörd", default_scheme="CRYPT")
        assert not schemes.verify(bare, "wrong", default_scheme="CRYPT")
    md5 = by_label["MD5-CRYPT"].split("}", 1)[1]
    assert schemes.split_scheme(md5 + "$ignored", "PLAIN") == ("MD5-CRYPT", md5)
    assert schemes.verify(md5 + "$ignored", "pässwörd", default_scheme="PLAIN")
    assert schemes.verify("pässwörd", "pässwörd", default_scheme="PLAIN")
    sha = by_label["SHA"].split("}", 1)[1]
    assert schemes.verify(sha, "pässwörd", default_scheme="SHA")


def test_crypt_accepts_every_crypt_format() -> None:
    # CRYPT, DES-CRYPT, SHA256-CRYPT and SHA512-CRYPT all verify with crypt(3), which
    # recognises the hash by its prefix.
    h512 = next(r[3] for r in ROWS if r[0] == "SHA512-CRYPT" and r[1] == "secret")
    data = h512.split("}", 1)[1]
    for scheme in ("CRYPT", "DES-CRYPT", "SHA256-CRYPT", "SHA512-CRYPT"):
        assert schemes.verify("{%s}%s" % (scheme, data), "secret")
    with pytest.raises(schemes.InvalidHash):
        schemes.verify("{BLF-CRYPT}" + data, "secret")      # BLF-CRYPT is bcrypt only


def test_empty_and_unknown() -> None:
    assert not schemes.verify("{CRYPT}", "")
    assert not schemes.verify("", "", default_scheme="CRYPT")
    assert schemes.verify("{PLAIN}", "")
    with pytest.raises(schemes.UnknownScheme):
        schemes.verify("{NOSUCH}abc", "abc")
    with pytest.raises(schemes.UnknownScheme):
        schemes.verify("{SHA.rot13}abc", "abc")
    with pytest.raises(schemes.UnknownScheme):
        schemes.generate("nosuch", "x")
    with pytest.raises(schemes.InvalidHash):
        schemes.verify("{SHA}not*base64", "x")
    with pytest.raises(schemes.InvalidHash):
        schemes.verify("{SHA}YWJj", "x")                      # wrong length
    with pytest.raises(schemes.InvalidHash):
        schemes.verify("{PBKDF2}nonsense", "x")
    assert not schemes.verify("{ARGON2I}nonsense", "x")
    assert not schemes.verify("{CRYPT}$9$unknown$format", "x")


def test_scheme_names_are_case_insensitive() -> None:
    assert schemes.generate("ssha256.hex", "a").startswith("{SSHA256.HEX}")
    assert schemes.verify(schemes.generate("sha", "a").replace("{SHA}", "{sha}"), "a")


@pytest.mark.parametrize("scheme", schemes.SCHEMES)
def test_generate_then_verify(scheme: str) -> None:
    hashed = schemes.generate(scheme, "pässwörd", user=USER)
    assert hashed.startswith("{" + scheme + "}")
    assert schemes.verify(hashed, "pässwörd", user=USER)
    assert not schemes.verify(hashed, "other", user=USER)


def test_salted_schemes_use_fresh_salt() -> None:
    for scheme in ("SSHA", "SSHA512", "SHA512-CRYPT", "BLF-CRYPT", "PBKDF2", "SCRAM-SHA-1"):
        assert schemes.generate(scheme, "x") != schemes.generate(scheme, "x")


def test_rounds() -> None:
    assert "$rounds=20000$" in schemes.generate("SHA512-CRYPT", "x", rounds=20000)
    assert "$rounds=" not in schemes.generate("SHA512-CRYPT", "x")   # 5000 is implicit
    assert schemes.generate("BLF-CRYPT", "x", rounds=4).startswith("{BLF-CRYPT}$2y$04$")
    assert "$7000$" in schemes.generate("PBKDF2", "x", rounds=7000)


def test_expensive_schemes_are_flagged() -> None:
    for scheme in ("BLF-CRYPT", "SHA512-CRYPT", "ARGON2ID", "PBKDF2", "CRYPT"):
        assert schemes.is_expensive(schemes.generate(scheme, "x"))
    assert schemes.is_expensive("$6$abc$def", "CRYPT")
    for scheme in ("PLAIN", "SHA", "SSHA512", "PLAIN-MD5"):
        assert not schemes.is_expensive(schemes.generate(scheme, "x"))


# --- live doveadm ----------------------------------------------------------------------

def _doveadm(*args: str) -> subprocess.CompletedProcess[str]:
    assert DOVEADM is not None
    return subprocess.run([DOVEADM, *args], capture_output=True, text=True, timeout=60)


LIVE_SCHEMES = [s for s in schemes.SCHEMES if s != "PLAIN-TRUNC"] + [
    "SHA.HEX", "SSHA512.HEX", "PLAIN.B64", "LDAP-MD5.HEX", "PLAIN-MD5.B64"]


@needs_doveadm
@pytest.mark.parametrize("scheme", LIVE_SCHEMES)
def test_live_doveadm_hash_verifies(scheme: str) -> None:
    password = "pä ss:wörd"
    out = _doveadm("pw", "-s", scheme, "-p", password, "-u", USER)
    assert out.returncode == 0, out.stderr
    hashed = out.stdout.strip()
    assert schemes.verify(hashed, password, user=USER)
    assert not schemes.verify(hashed, "!" + password, user=USER)


@needs_doveadm
@pytest.mark.parametrize("scheme", list(schemes.SCHEMES) + ["SHA.HEX", "PLAIN.B64",
                                                           "SSHA256.HEX", "LDAP-MD5.HEX"])
def test_live_doveadm_accepts_our_hash(scheme: str) -> None:
    password = "pä ss:wörd"
    hashed = schemes.generate(scheme, password, user=USER)
    ok = _doveadm("pw", "-t", hashed, "-p", password, "-u", USER)
    assert ok.returncode == 0, (hashed, ok.stdout, ok.stderr)
    assert "(verified)" in ok.stdout
    bad = _doveadm("pw", "-t", hashed, "-p", "!" + password, "-u", USER)
    assert bad.returncode != 0


@needs_doveadm
@pytest.mark.parametrize("scheme,rounds", [("SHA512-CRYPT", 10000), ("BLF-CRYPT", 6),
                                           ("SHA256-CRYPT", 2000)])
def test_live_doveadm_accepts_our_rounds(scheme: str, rounds: int) -> None:
    hashed = schemes.generate(scheme, "secret", rounds=rounds)
    assert _doveadm("pw", "-t", hashed, "-p", "secret").returncode == 0
