"""Regenerate tests/passdb/fixtures/doveadm_hashes.tsv with Dovecot's own doveadm.

    python3 tests/passdb/make_doveadm_fixtures.py

Every row is a hash made by ``doveadm pw -s SCHEME [-r ROUNDS] -p PASSWORD -u USER`` and
the answer of ``doveadm pw -t HASH -p CANDIDATE -u USER`` at generation time (``1`` =
verified, ``0`` = refused), so test_schemes.py checks our verify() against what Dovecot
itself decided, even where doveadm is not installed. Rows are tab-separated; passwords
and hashes never contain tabs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).parent / "fixtures" / "doveadm_hashes.tsv"
USER = "user@example.com"

PASSWORDS = ["pässwörd", "secret", "with:colon and space", "x" * 80]
SCHEMES = [
    "PLAIN", "CLEAR", "CLEARTEXT", "CRYPT", "DES-CRYPT", "MD5", "MD5-CRYPT",
    "SHA256-CRYPT", "SHA512-CRYPT", "BLF-CRYPT", "SHA", "SHA1", "SSHA", "SHA256", "SSHA256",
    "SHA512", "SSHA512", "SMD5", "PLAIN-MD4", "PLAIN-MD5", "LDAP-MD5", "PBKDF2", "ARGON2I",
    "ARGON2ID", "SCRAM-SHA-1", "SCRAM-SHA-256", "CRAM-MD5", "HMAC-MD5", "DIGEST-MD5",
    "SHA.HEX", "SHA256.HEX", "SHA512.B64", "SSHA.HEX", "SSHA256.HEX", "SSHA512.HEX",
    "PLAIN.B64", "PLAIN.HEX", "PLAIN-MD5.B64", "LDAP-MD5.HEX", "SMD5.HEX",
]
ROUNDS = [("SHA256-CRYPT", 1000), ("SHA512-CRYPT", 12000), ("BLF-CRYPT", 6), ("PBKDF2", 1000)]
# PLAIN-TRUNC: doveadm's generator omits the length prefix its verifier needs, so
# these rows are written by hand and only their doveadm -t verdict is recorded.
PLAIN_TRUNC = ["{PLAIN-TRUNC}8-pässwör", "{PLAIN-TRUNC}6-secret", "{PLAIN-TRUNC}3-sec",
               "{PLAIN-TRUNC}pässwörd"]


def doveadm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["doveadm", *args], capture_output=True, text=True, check=False)


def verdict(hashed: str, candidate: str) -> str:
    return "1" if doveadm("pw", "-t", hashed, "-p", candidate, "-u", USER).returncode == 0 \
        else "0"


def main() -> int:
    if shutil.which("doveadm") is None:
        print("doveadm not found", file=sys.stderr)
        return 1
    rows = ["# scheme\tpassword\tuser\thash\tcandidate\tdoveadm_verified"]
    jobs = [(s, 0) for s in SCHEMES] + ROUNDS
    for scheme, rounds in jobs:
        for pw in PASSWORDS:
            if scheme.startswith("ARGON2") and pw != PASSWORDS[0]:
                continue                        # slow; one password is enough
            args = ["pw", "-s", scheme, "-p", pw, "-u", USER]
            if rounds:
                args += ["-r", str(rounds)]
            out = doveadm(*args)
            if out.returncode != 0:
                raise SystemExit(f"doveadm {' '.join(args)} failed: {out.stderr}")
            hashed = out.stdout.strip()
            candidates = [pw, pw + "x", "wrong"]
            if pw == "x" * 80:
                candidates.append("x" * 72 + "y" * 8)   # bcrypt/DES truncation
            for cand in candidates:
                label = f"{scheme}" + (f"/r{rounds}" if rounds else "")
                rows.append("\t".join([label, pw, USER, hashed, cand, verdict(hashed, cand)]))
    for hashed in PLAIN_TRUNC:
        for cand in ["pässwörd", "pässwör", "pässwördextra", "secret", "secretive", "sec",
                     "se", "wrong"]:
            rows.append("\t".join(["PLAIN-TRUNC", "-", USER, hashed, cand,
                                   verdict(hashed, cand)]))
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"wrote {len(rows) - 1} rows to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
