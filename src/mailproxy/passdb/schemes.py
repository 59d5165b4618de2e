"""Dovecot password schemes: verify and generate ``{SCHEME}data`` strings.

Owns: the scheme table of Dovecot 2.3 (``src/auth/password-scheme*.c``): names, default
encodings (``.b64``/``.base64``/``.hex`` suffixes override them), Dovecot's hex-or-base64
guess for fixed-length digests, ``password_get_scheme()``'s ``$1$`` rule, and which
schemes are expensive enough that callers must verify them off the Trio thread.

Pure and synchronous: no trio import here. Callers (passdb/base.py) run the expensive
schemes in ``trio.to_thread.run_sync``. Never imports the deprecated stdlib ``crypt``
module: crypt(3) formats come from libpass (passlib's pure-Python backends), bcrypt from
``bcrypt``, Argon2 from ``argon2-cffi``. Every comparison is constant-time
(``hmac.compare_digest``).

Passwords are ``str`` and hashed as UTF-8, as Dovecot hashes the bytes the client sent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "SCHEMES",
    "SchemeError",
    "UnknownScheme",
    "InvalidHash",
    "split_scheme",
    "verify",
    "generate",
    "is_expensive",
    "canonical_scheme",
]


class SchemeError(ValueError):
    """The stored password cannot be checked (unknown scheme or malformed data)."""


class UnknownScheme(SchemeError):
    """The scheme name (or its encoding suffix) is not one Dovecot knows."""


class InvalidHash(SchemeError):
    """The data after ``{SCHEME}`` is not valid for that scheme."""


# --- encodings -----------------------------------------------------------------------

_NONE, _B64, _HEX = "none", "b64", "hex"

_SALT_CHARS = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _salt(n: int) -> str:
    """password_generate_salt(): n characters from crypt's alphabet."""
    return "".join(secrets.choice(_SALT_CHARS) for _ in range(n))


def _b64decode(text: str) -> bytes:
    data = text.strip()
    # Dovecot's base64_decode() accepts input without the trailing padding.
    data += "=" * (-len(data) % 4)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidHash("Input isn't valid base64 encoded data") from e


def _hexdecode(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise InvalidHash("Input isn't valid HEX encoded data") from e


def _encode(raw: bytes, encoding: str) -> str:
    if encoding == _B64:
        return base64.b64encode(raw).decode("ascii")
    if encoding == _HEX:
        return raw.hex()
    return raw.decode("utf-8", "surrogateescape")


def _eq(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


# --- scheme implementations ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Params:
    user: str | None = None
    rounds: int = 0


@dataclass(frozen=True, slots=True)
class _Scheme:
    name: str
    default_encoding: str
    raw_len: int                          # 0 = variable length (no hex/base64 guess)
    generate: Callable[[str, _Params], bytes]
    # verify(plaintext, raw stored bytes, params) -> bool; None = generate and compare
    verify: Callable[[str, bytes, _Params], bool] | None
    expensive: bool = False


def _digest_generate(algo: str) -> Callable[[str, _Params], bytes]:
    def gen(plain: str, params: _Params) -> bytes:
        return hashlib.new(algo, _utf8(plain)).digest()
    return gen


def _md4(data: bytes) -> bytes:
    try:
        return hashlib.new("md4", data).digest()
    except ValueError:
        # OpenSSL 3 hides MD4 in its legacy provider; libpass ships a pure-Python one.
        from passlib.crypto.digest import lookup_hash

        return lookup_hash("md4").const(data).digest()


def _salted(algo: str, digest_len: int, salt_len: int = 4):  # type: ignore[no-untyped-def]
    """SSHA*/SMD5: digest(password + salt) + salt (password-scheme.c ssha_generate)."""

    def gen(plain: str, params: _Params) -> bytes:
        salt = secrets.token_bytes(salt_len)
        return hashlib.new(algo, _utf8(plain) + salt).digest() + salt

    def ver(plain: str, raw: bytes, params: _Params) -> bool:
        if len(raw) <= digest_len:
            raise InvalidHash(f"{algo.upper()} password is too short")
        salt = raw[digest_len:]
        return _eq(hashlib.new(algo, _utf8(plain) + salt).digest(), raw[:digest_len])

    return gen, ver


def _plain_generate(plain: str, params: _Params) -> bytes:
    return _utf8(plain)


def _plain_verify(plain: str, raw: bytes, params: _Params) -> bool:
    return _eq(_utf8(plain), raw)


def _plain_trunc_generate(plain: str, params: _Params) -> bytes:
    # Dovecot's generator writes the bare password, which its own verifier then rejects
    # ("missing length: prefix"); write the verifiable <length>-<password> form instead.
    raw = _utf8(plain)
    return b"%d-" % len(raw) + raw


def _plain_trunc_verify(plain: str, raw: bytes, params: _Params) -> bool:
    # format: <length>-<password>; a longer given password matches when the stored
    # password was truncated to <length> and the prefix matches (plain_trunc_verify()).
    i = 0
    trunc_len = 0
    while i < len(raw) and 0x30 <= raw[i] <= 0x39:
        trunc_len = trunc_len * 10 + raw[i] - 0x30
        i += 1
    if i == len(raw) or raw[i : i + 1] != b"-":
        raise InvalidHash("PLAIN-TRUNC missing length: prefix")
    stored = raw[i + 1 :]
    given = _utf8(plain)
    if len(stored) == trunc_len and len(given) >= trunc_len:
        return _eq(stored, given[:trunc_len])
    return len(given) == len(stored) and _eq(stored, given)


# crypt(3) family ----------------------------------------------------------------------

_BCRYPT_MAX_PASSWORD = 72


def _bcrypt_hash(plain: str, setting: bytes) -> bytes:
    import bcrypt

    # crypt_blowfish (Dovecot's own copy) uses the first 72 bytes; bcrypt>=5 refuses longer.
    return bcrypt.hashpw(_utf8(plain)[:_BCRYPT_MAX_PASSWORD], setting)


def _bcrypt_verify(plain: str, stored: str) -> bool:
    # bcrypt computes $2a$/$2b$/$2y$ the same way (modern crypt_blowfish); the python
    # library only knows 2a/2b, so hash with $2b$ and compare the rest.
    if len(stored) < 30 or not stored.startswith("$2") or not ("a" <= stored[2] <= "z") \
            or stored[3] != "$":
        raise InvalidHash("Password is not blowfish password")
    setting = ("$2b$" + stored[4:29]).encode("ascii", "replace")
    try:
        computed = _bcrypt_hash(plain, setting).decode("ascii")
    except ValueError as e:
        raise InvalidHash(f"invalid bcrypt hash: {e}") from e
    return _eq(_utf8(computed[4:]), _utf8(stored[4:]))


def _crypt_verify_str(plain: str, stored: str) -> bool:
    """crypt_verify(): libc crypt() by the hash's own prefix (DES, $1$, $5$, $6$, $2?$)."""
    from passlib import hash as ph

    if len(stored) > 4 and stored.startswith("$2") and stored[3] == "$":
        return _bcrypt_verify(plain, stored)
    if stored == "":
        return False  # Dovecot: an empty crypt() hash would match anything: refuse
    handler: object
    if stored.startswith("$1$"):
        handler = ph.md5_crypt
    elif stored.startswith("$5$"):
        handler = ph.sha256_crypt
    elif stored.startswith("$6$"):
        handler = ph.sha512_crypt
    elif stored.startswith("_"):
        handler = ph.bsdi_crypt
    elif len(stored) == 13 and not stored.startswith("$"):
        handler = ph.des_crypt
    else:
        # libc crypt() fails or returns "*0" for unknown formats: no match.
        return False
    try:
        return bool(handler.verify(plain, stored))  # type: ignore[attr-defined]
    except ValueError:
        # Not a parsable hash of that kind: crypt() returns something else, no match.
        return False


def _crypt_verify(plain: str, raw: bytes, params: _Params) -> bool:
    return _crypt_verify_str(plain, raw.decode("utf-8", "surrogateescape"))


def _blf_verify(plain: str, raw: bytes, params: _Params) -> bool:
    if not raw:
        return False
    return _bcrypt_verify(plain, raw.decode("utf-8", "surrogateescape"))


def _blf_generate(plain: str, params: _Params) -> bytes:
    import bcrypt

    rounds = params.rounds or 5
    rounds = min(max(rounds, 4), 31)
    hashed = _bcrypt_hash(plain, bcrypt.gensalt(rounds=rounds, prefix=b"2b"))
    return b"$2y$" + hashed[4:]            # Dovecot writes $2y$ (CRYPT_BLF_PREFIX)


def _des_generate(plain: str, params: _Params) -> bytes:
    from passlib.hash import des_crypt

    return _utf8(des_crypt.hash(plain))


def _sha_crypt_generate(kind: str) -> Callable[[str, _Params], bytes]:
    def gen(plain: str, params: _Params) -> bytes:
        from passlib.hash import sha256_crypt, sha512_crypt

        handler = sha256_crypt if kind == "5" else sha512_crypt
        rounds = params.rounds or 5000
        rounds = min(max(rounds, 1000), 999999999)
        # rounds=5000 is crypt's implicit default and is then left out, as Dovecot does.
        return _utf8(handler.using(rounds=rounds).hash(plain))
    return gen


def _md5_crypt_generate(plain: str, params: _Params) -> bytes:
    from passlib.hash import md5_crypt

    return _utf8(md5_crypt.hash(plain))


def _md5_crypt_verify(plain: str, raw: bytes, params: _Params) -> bool:
    from passlib.hash import md5_crypt

    stored = raw.decode("utf-8", "surrogateescape")
    try:
        return bool(md5_crypt.verify(plain, stored))
    except ValueError:
        return False


def _md5_verify(plain: str, raw: bytes, params: _Params) -> bool:
    """{MD5}: MD5-CRYPT when it starts with $1$, else PLAIN-MD5 (md5_verify())."""
    stored = raw.decode("utf-8", "surrogateescape")
    if stored.startswith("$1$"):
        return _md5_crypt_verify(plain, raw, params)
    try:
        digest = _decode(stored, _SCHEMES["PLAIN-MD5"], None)
    except SchemeError as e:
        raise InvalidHash("Not a valid MD5-CRYPT or PLAIN-MD5 password") from e
    return _eq(hashlib.md5(_utf8(plain)).digest(), digest)


# PBKDF2 / SCRAM / Argon2 ------------------------------------------------------------------


def _pbkdf2_generate(plain: str, params: _Params) -> bytes:
    rounds = params.rounds or 5000
    salt = _salt(16)
    key = hashlib.pbkdf2_hmac("sha1", _utf8(plain), salt.encode("ascii"), rounds, 20)
    return f"$1${salt}${rounds}${key.hex()}".encode("ascii")


def _pbkdf2_verify(plain: str, raw: bytes, params: _Params) -> bool:
    # $1$salt$rounds$hash (password-scheme-pbkdf2.c)
    if not raw.startswith(b"$1$"):
        raise InvalidHash("Invalid PBKDF2 passdb entry prefix")
    fields = raw[3:].split(b"$")
    if len(fields) != 3 or not fields[1].isdigit():
        raise InvalidHash("Invalid PBKDF2 passdb entry format")
    salt, rounds_b, hexkey = fields
    if len(hexkey) != 40:
        raise InvalidHash("PBKDF2 hash not 160bit hex-encoded")
    expected = _hexdecode(hexkey.decode("ascii", "replace"))
    rounds = int(rounds_b)
    if rounds < 1:
        raise InvalidHash("Invalid PBKDF2 passdb entry format")
    key = hashlib.pbkdf2_hmac("sha1", _utf8(plain), salt, rounds, 20)
    return _eq(key, expected)


def _scram(algo: str):  # type: ignore[no-untyped-def]
    size = hashlib.new(algo).digest_size

    def keys(plain: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
        salted = hashlib.pbkdf2_hmac(algo, _utf8(plain), salt, iterations, size)
        client_key = hmac.new(salted, b"Client Key", algo).digest()
        server_key = hmac.new(salted, b"Server Key", algo).digest()
        return hashlib.new(algo, client_key).digest(), server_key

    def gen(plain: str, params: _Params) -> bytes:
        salt = secrets.token_bytes(16)
        stored, server = keys(plain, salt, 4096)
        return b",".join([b"4096", base64.b64encode(salt), base64.b64encode(stored),
                          base64.b64encode(server)])

    def ver(plain: str, raw: bytes, params: _Params) -> bool:
        # iter,salt,stored_key,server_key (password-scheme-scram.c)
        fields = raw.decode("ascii", "replace").split(",")
        if len(fields) != 4:
            raise InvalidHash("Invalid SCRAM passdb entry format")
        if not fields[0].isdigit() or not 4096 <= int(fields[0]) <= 2**31 - 1:
            raise InvalidHash("Invalid SCRAM iteration count in passdb")
        stored = _b64decode(fields[2])
        if len(stored) != size or len(_b64decode(fields[3])) != size:
            raise InvalidHash("Invalid SCRAM StoredKey in passdb")
        computed, _server = keys(plain, _b64decode(fields[1]), int(fields[0]))
        return _eq(computed, stored)

    return gen, ver


# libsodium's crypto_pwhash_* limits, which Dovecot's generate_argon2i/id() use.
_ARGON2 = {
    # name: (opslimit interactive, moderate, sensitive), (memlimit interactive, moderate, sensitive)
    "ARGON2I": ((4, 6, 8), (33554432, 134217728, 536870912)),
    "ARGON2ID": ((2, 3, 4), (67108864, 268435456, 1073741824)),
}


def _argon2_generate(name: str) -> Callable[[str, _Params], bytes]:
    def gen(plain: str, params: _Params) -> bytes:
        from argon2.low_level import Type, hash_secret

        (ops_i, ops_m, ops_s), (mem_i, mem_m, mem_s) = _ARGON2[name]
        rounds = params.rounds or ops_i
        memlimit = mem_s if rounds >= ops_s else mem_m if rounds >= ops_m else mem_i
        if name == "ARGON2ID" and rounds < 3:
            rounds = 3                     # Dovecot: "Bug in sodium-1.0.13"
        kind = Type.I if name == "ARGON2I" else Type.ID
        return hash_secret(_utf8(plain), secrets.token_bytes(16), time_cost=rounds,
                           memory_cost=memlimit // 1024, parallelism=1, hash_len=32,
                           type=kind)
    return gen


def _argon2_verify(plain: str, raw: bytes, params: _Params) -> bool:
    # crypto_pwhash_str_verify() takes the type from the hash itself, for both schemes.
    from argon2.exceptions import InvalidHashError, VerificationError
    from argon2.low_level import Type, verify_secret

    if raw.startswith(b"$argon2id$"):
        kind = Type.ID
    elif raw.startswith(b"$argon2i$"):
        kind = Type.I
    else:
        return False
    try:
        return verify_secret(raw, _utf8(plain), kind)
    except VerificationError:
        return False
    except (InvalidHashError, ValueError):
        return False


# CRAM-MD5 / DIGEST-MD5 --------------------------------------------------------------------

_MD5_S = [7, 12, 17, 22] * 4 + [5, 9, 14, 20] * 4 + [4, 11, 16, 23] * 4 + [6, 10, 15, 21] * 4
_MD5_K = [int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64)]


def _md5_compress(state: tuple[int, int, int, int], block: bytes) -> tuple[int, int, int, int]:
    """One MD5 compression round (RFC 1321), to get HMAC's intermediate state."""
    m = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _MD5_K[i] + m[g]) & 0xFFFFFFFF
        a, d, c = d, c, b
        b = (b + ((f << _MD5_S[i]) | (f >> (32 - _MD5_S[i])))) & 0xFFFFFFFF
    s = state
    return ((s[0] + a) & 0xFFFFFFFF, (s[1] + b) & 0xFFFFFFFF,
            (s[2] + c) & 0xFFFFFFFF, (s[3] + d) & 0xFFFFFFFF)


def _cram_md5_generate(plain: str, params: _Params) -> bytes:
    """hmac_md5_get_cram_context(): MD5 states after the opad and ipad blocks."""
    key = _utf8(plain)
    if len(key) > 64:
        key = hashlib.md5(key).digest()
    key = key.ljust(64, b"\0")
    iv = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
    inner = _md5_compress(iv, bytes(k ^ 0x36 for k in key))
    outer = _md5_compress(iv, bytes(k ^ 0x5C for k in key))
    return struct.pack("<4I", *outer) + struct.pack("<4I", *inner)


def _digest_md5_generate(plain: str, params: _Params) -> bytes:
    if params.user is None:
        raise SchemeError("DIGEST-MD5 needs the user name")
    user, _, realm = params.user.rpartition("@")
    if not user:                                  # no '@': empty realm
        user, realm = params.user, ""
    return hashlib.md5(_utf8(f"{user}:{realm}:{plain}")).digest()


def _build_schemes() -> dict[str, _Scheme]:
    table: list[_Scheme] = []
    add = table.append
    add(_Scheme("MD5", _NONE, 0, _md5_crypt_generate, _md5_verify, expensive=True))
    add(_Scheme("MD5-CRYPT", _NONE, 0, _md5_crypt_generate, _md5_crypt_verify, expensive=True))
    for name, algo, size in (("SHA", "sha1", 20), ("SHA1", "sha1", 20),
                             ("SHA256", "sha256", 32), ("SHA512", "sha512", 64)):
        add(_Scheme(name, _B64, size, _digest_generate(algo), None))
    for name, algo, size in (("SMD5", "md5", 16), ("SSHA", "sha1", 20),
                             ("SSHA256", "sha256", 32), ("SSHA512", "sha512", 64)):
        gen, ver = _salted(algo, size)
        add(_Scheme(name, _B64, 0, gen, ver))
    for name in ("PLAIN", "CLEAR", "CLEARTEXT"):
        add(_Scheme(name, _NONE, 0, _plain_generate, _plain_verify))
    add(_Scheme("PLAIN-TRUNC", _NONE, 0, _plain_trunc_generate, _plain_trunc_verify))
    add(_Scheme("CRAM-MD5", _HEX, 32, _cram_md5_generate, None))
    add(_Scheme("HMAC-MD5", _HEX, 32, _cram_md5_generate, None))
    gen1, ver1 = _scram("sha1")
    add(_Scheme("SCRAM-SHA-1", _NONE, 0, gen1, ver1, expensive=True))
    gen256, ver256 = _scram("sha256")
    add(_Scheme("SCRAM-SHA-256", _NONE, 0, gen256, ver256, expensive=True))
    add(_Scheme("DIGEST-MD5", _HEX, 16, _digest_md5_generate, None))
    add(_Scheme("PLAIN-MD4", _HEX, 16, lambda p, _: _md4(_utf8(p)), None))
    add(_Scheme("PLAIN-MD5", _HEX, 16, _digest_generate("md5"), None))
    add(_Scheme("LDAP-MD5", _B64, 16, _digest_generate("md5"), None))
    add(_Scheme("PBKDF2", _NONE, 0, _pbkdf2_generate, _pbkdf2_verify, expensive=True))
    # password-scheme-crypt.c: DES-CRYPT, SHA256-CRYPT, SHA512-CRYPT verify with crypt()
    # (any crypt format), BLF-CRYPT only bcrypt; CRYPT generates bcrypt.
    add(_Scheme("DES-CRYPT", _NONE, 0, _des_generate, _crypt_verify, expensive=True))
    add(_Scheme("SHA256-CRYPT", _NONE, 0, _sha_crypt_generate("5"), _crypt_verify,
                expensive=True))
    add(_Scheme("SHA512-CRYPT", _NONE, 0, _sha_crypt_generate("6"), _crypt_verify,
                expensive=True))
    add(_Scheme("BLF-CRYPT", _NONE, 0, _blf_generate, _blf_verify, expensive=True))
    add(_Scheme("CRYPT", _NONE, 0, _blf_generate, _crypt_verify, expensive=True))
    add(_Scheme("ARGON2I", _NONE, 0, _argon2_generate("ARGON2I"), _argon2_verify,
                expensive=True))
    add(_Scheme("ARGON2ID", _NONE, 0, _argon2_generate("ARGON2ID"), _argon2_verify,
                expensive=True))
    return {s.name: s for s in table}


_SCHEMES = _build_schemes()

#: Every scheme name known here (Dovecot 2.3 minus OTP, which needs S/KEY state).
SCHEMES: tuple[str, ...] = tuple(sorted(_SCHEMES))


def _lookup(name: str) -> tuple[_Scheme, str, bool]:
    """password_scheme_lookup(): scheme, encoding, whether the encoding was explicit."""
    base, dot, suffix = name.partition(".")
    scheme = _SCHEMES.get(base.upper())
    if scheme is None:
        raise UnknownScheme(f"Unknown scheme {name}")
    if not dot:
        return scheme, scheme.default_encoding, False
    suffix = suffix.lower()
    if suffix in ("b64", "base64"):
        return scheme, _B64, True
    if suffix == "hex":
        return scheme, _HEX, True
    raise UnknownScheme(f"Unknown scheme {name}")


def canonical_scheme(name: str) -> str:
    """The scheme name as Dovecot prints it (upper case); UnknownScheme if unknown."""
    _lookup(name)
    return name.upper()


def _decode(data: str, scheme: _Scheme, explicit: str | None) -> bytes:
    """password_decode(): the raw bytes behind the encoded stored password."""
    encoding = explicit or scheme.default_encoding
    if encoding != _NONE and scheme.raw_len and explicit is None:
        # No suffix given: guess hex by length, else base64 (and base64 after bad hex).
        if len(data) == scheme.raw_len * 2:
            try:
                raw = bytes.fromhex(data)
            except ValueError:
                raw = _b64decode(data)
        else:
            raw = _b64decode(data)
    elif encoding == _HEX:
        raw = _hexdecode(data)
    elif encoding == _B64:
        raw = _b64decode(data)
    else:
        raw = _utf8(data)
    if scheme.raw_len and len(raw) != scheme.raw_len:
        raise InvalidHash(f"Input length isn't valid ({len(raw)} instead of {scheme.raw_len})")
    return raw


def split_scheme(stored: str, default_scheme: str) -> tuple[str, str]:
    """password_get_scheme(): (scheme, data) of a stored password.

    ``{SCHEME}data`` gives SCHEME; a bare ``$1$salt$hash`` is MD5-CRYPT (anything after a
    fourth ``$`` is dropped); otherwise the passdb's default scheme applies.
    """
    if stored.startswith("$1$"):
        parts = stored.split("$")
        if len(parts) >= 4:
            return "MD5-CRYPT", "$".join(parts[:4])
    if stored.startswith("{"):
        end = stored.find("}")
        if end != -1:
            return stored[1:end], stored[end + 1 :]
    return default_scheme, stored


def is_expensive(stored: str, default_scheme: str = "CRYPT") -> bool:
    """True when verifying this password costs real CPU time (run it off the event loop)."""
    scheme_name, _data = split_scheme(stored, default_scheme)
    try:
        scheme, _enc, _explicit = _lookup(scheme_name)
    except UnknownScheme:
        return False
    return scheme.expensive


def verify(stored: str, password: str, *, default_scheme: str = "CRYPT",
           user: str | None = None) -> bool:
    """Does ``password`` match the stored password?

    ``stored`` is what the passdb returned (``{SCHEME}data`` or bare data in
    ``default_scheme``). ``user`` is needed by DIGEST-MD5 only. Raises UnknownScheme or
    InvalidHash when the stored password cannot be checked at all; Dovecot then logs an
    error and refuses the login.
    """
    scheme_name, data = split_scheme(stored, default_scheme)
    scheme, encoding, explicit = _lookup(scheme_name)
    raw = _decode(data, scheme, encoding if explicit else None)
    params = _Params(user=user)
    if scheme.verify is not None:
        return scheme.verify(password, raw, params)
    generated = scheme.generate(password, params)
    return len(generated) == len(raw) and _eq(generated, raw)


def generate(scheme: str, password: str, *, rounds: int = 0, user: str | None = None) -> str:
    """``doveadm pw -s SCHEME``: a new ``{SCHEME}data`` string (fresh salt)."""
    s, encoding, _explicit = _lookup(scheme)
    raw = s.generate(password, _Params(user=user, rounds=rounds))
    return "{" + scheme.upper() + "}" + _encode(raw, encoding)
