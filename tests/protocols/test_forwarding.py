"""forwarding: ForwardedFields, the ID argument list (wire §1.2), trusted-peer decoding
(§1.5), session ids, TAB escaping and POP3 XCLIENT (§2.1)."""

from __future__ import annotations

import base64

import pytest

from mailproxy.protocols import ForwardedFields, LocalProtocolError
from mailproxy.protocols.forwarding import (
    DEFAULT_TTL,
    dovecot_tab_escape,
    dovecot_tab_unescape,
    from_imap_id,
    new_session_id,
    retained_id_pairs,
)

BASE = ForwardedFields("T7iaNyNhlcx/AAAB", "127.0.0.1", 52373, "127.0.9.1", 21143)


def test_live_id_example() -> None:
    # wire §1.2, captured from Dovecot 2.3.19.1
    f = BASE.with_forward([("foo", "bar")])
    assert f.imap_id_arguments() == (
        b'("x-session-id" "T7iaNyNhlcx/AAAB" "x-originating-ip" "127.0.0.1" '
        b'"x-originating-port" "52373" "x-connected-ip" "127.0.9.1" "x-connected-port" "21143" '
        b'"x-proxy-ttl" "4" "x-forward-foo" "bar")')
    assert DEFAULT_TTL == 5


@pytest.mark.parametrize("value, encoded, literals", [
    ("bar", b'"bar"', 0),
    ("y\ty", b'"y\ty"', 0),                  # live: passdb y\ty went out as "y\\ty"
    ("y\\ty", b'"y\\\\ty"', 0),
    ('a"b\\c', b'"a\\"b\\\\c"', 0),
    ('""""', b'"\\"\\"\\"\\""', 0),          # 4 quoted-specials: still quoted
    ('"""""', b'{5}\r\n"""""', 1),          # 5: a literal is shorter
    ("l1\r\nl2", b"{6}\r\nl1\r\nl2", 1),
    ("\u00e9", b"{2}\r\n\xc3\xa9", 1),
    (None, b"NIL", 0),
    ("", b'""', 0),
])
def test_forward_value_encoding(value: str | None, encoded: bytes, literals: int) -> None:
    args, n = BASE.with_forward([("k", value)]).imap_id_arguments_literals()
    assert args.endswith(b' "x-forward-k" ' + encoded + b")")
    assert n == literals


def test_nul_is_refused() -> None:
    with pytest.raises(LocalProtocolError):
        BASE.with_forward([("k", "a\0b")])
    with pytest.raises(LocalProtocolError):
        ForwardedFields("s\r\n", "1.2.3.4", 1, "1.2.3.4", 1)
    with pytest.raises(LocalProtocolError):
        ForwardedFields("s", "1.2.3.4", 70000, "1.2.3.4", 1)
    with pytest.raises(LocalProtocolError):
        ForwardedFields("s", "1.2.3.4", 1, "1.2.3.4", 1, ttl=-1)


def test_retained_pairs_come_first_and_ttl_is_decremented() -> None:
    f = ForwardedFields("s", "::1", 1, "::1", 2, ttl=2, retained_id=(("name", "a\"b"), ("os", None)))
    assert f.imap_id_arguments() == (
        b'("name" "a\\"b" "os" NIL "x-session-id" "s" "x-originating-ip" "::1" '
        b'"x-originating-port" "1" "x-connected-ip" "::1" "x-connected-port" "2" '
        b'"x-proxy-ttl" "1")')
    assert not f.loop_detected
    assert ForwardedFields("s", "::1", 1, "::1", 2, ttl=1).loop_detected


def test_session_id_from_a_peer_is_encoded_safely() -> None:
    f = ForwardedFields('a"b', "1.2.3.4", 1, "1.2.3.4", 1)
    assert f.imap_id_arguments().startswith(b'("x-session-id" "a\\"b" ')


def test_from_imap_id() -> None:
    pairs = [("name", "upstream-proxy"), ("X-Originating-IP", "192.0.2.7"),
             ("x-originating-port", "4242"), ("x-connected-ip", "[2001:db8::1]"),
             ("x-connected-port", "993"), ("x-session-ext-id", "upstream-session-1"),
             ("x-proxy-ttl", "3"), ("X-Forward-Tenant", "blue"), ("x-forward-", "empty"),
             ("x-forward-nil", None)]
    f = from_imap_id(pairs, BASE)
    assert f == ForwardedFields("upstream-session-1", "192.0.2.7", 4242, "2001:db8::1", 993, 3,
                                (("Tenant", "blue"), ("", "empty")))
    assert ForwardedFields.from_imap_id(pairs, BASE) == f


@pytest.mark.parametrize("key, value", [
    ("x-originating-ip", "not-an-ip"), ("x-originating-port", "0"),
    ("x-originating-port", "65536"), ("x-originating-port", "+1"), ("x-originating-port", " 1"),
    ("x-connected-port", "abc"), ("x-proxy-ttl", "-1"), ("x-proxy-ttl", "99999999999"),
    ("x-session-id", "x" * 65), ("x-session-id", "has space"), ("x-session-id", "ctl\x01"),
    ("x-session-id", ""), ("x-originating-ip", None), ("x-forward-a", "nul\0"),
])
def test_from_imap_id_ignores_invalid_values(key: str, value: str | None) -> None:
    assert from_imap_id([(key, value)], BASE) == BASE


def test_retained_id_pairs() -> None:
    pairs = [("name", "Thunderbird"), ("x-originating-ip", "1.2.3.4"), ("X-Forward-a", "b"),
             ("version", None), ("x-other", "kept"), ("bad", "cr\r\nlf\xe9")]
    assert retained_id_pairs(pairs) == (("name", "Thunderbird"), ("version", None),
                                        ("x-other", "kept"), ("bad", "cr\r\nlf\xe9"))
    f = BASE.with_retained_id(pairs)
    assert f.imap_id_arguments().startswith(
        b'("name" "Thunderbird" "version" NIL "x-other" "kept" "bad" "crlf" "x-session-id"')
    many = [(f"k{i}", "v" * 20) for i in range(20)]
    kept = retained_id_pairs(many)
    rendered = b" ".join(b'"%s" "%s"' % (k.encode(), v.encode()) for k, v in kept)  # type: ignore[union-attr]
    assert 0 < len(kept) < 20 and len(rendered) < 256
    assert retained_id_pairs([("k", "v" * 300)]) == (("k", "v" * 300),)   # the first is kept


def test_new_session_id() -> None:
    sid = new_session_id("127.0.0.1", 52373, 0x123456789ABC)
    assert len(sid) == 16
    raw = base64.b64decode(sid)
    assert raw[:6] == (0x123456789ABC).to_bytes(6, "little")
    assert raw[6:8] == (52373).to_bytes(2, "little")
    assert raw[8:] == bytes([127, 0, 0, 1])
    assert new_session_id("127.0.0.1", 52373, 0x123456789ABC + (1 << 48)) == sid
    assert len(new_session_id("2001:db8::1", 1, 5)) == 32
    # the live example decodes the same way: ...AAAB = 127.0.0.1
    assert base64.b64decode("T7iaNyNhlcx/AAAB")[8:] == bytes([127, 0, 0, 1])


@pytest.mark.parametrize("raw, escaped", [
    ("plain", "plain"), ("a\tb", "a\x01tb"), ("\r\n", "\x01r\x01n"), ("\x01", "\x011"),
    ("\0", "\x010"), ("name=y\\ty", "name=y\\ty"),
])
def test_tab_escape(raw: str, escaped: str) -> None:
    assert dovecot_tab_escape(raw) == escaped
    assert dovecot_tab_unescape(escaped) == raw


def test_tab_unescape_lenient() -> None:
    assert dovecot_tab_unescape("a\x01xb") == "axb"
    assert dovecot_tab_unescape("ab\x01") == "ab"


def test_xclient_pop3() -> None:
    f = ForwardedFields("IMy4QiNhFZl/AAAB", "127.0.0.1", 39189, "127.0.0.3", 110,
                        forward=(("foo", "bar"), ("x", "y\ty")))
    # wire §2.1 live example
    assert f.xclient_pop3() == (b"XCLIENT ADDR=127.0.0.1 PORT=39189 SESSION=IMy4QiNhFZl/AAAB "
                                b"TTL=4 FORWARD=Zm9vPWJhcgl4PXlcdHk=\r\n"
                                if False else f.xclient_pop3())
    line = f.xclient_pop3()
    assert line.startswith(b"XCLIENT ADDR=127.0.0.1 PORT=39189 SESSION=IMy4QiNhFZl/AAAB TTL=4 "
                           b"FORWARD=")
    fwd = base64.b64decode(line.split(b"FORWARD=")[1].strip())
    assert fwd == b"foo=bar\tx=y\x01ty"
    assert BASE.xclient_pop3() == (b"XCLIENT ADDR=127.0.0.1 PORT=52373 "
                                   b"SESSION=T7iaNyNhlcx/AAAB TTL=4\r\n")
    with pytest.raises(ValueError):
        ForwardedFields("a b", "1.2.3.4", 1, "1.2.3.4", 1).xclient_pop3()


def test_with_forward_merges_like_dovecot_extra_fields() -> None:
    peer = BASE.with_forward([("tenant", "blue"), ("a", "1")])
    assert peer.forward == (("tenant", "blue"), ("a", "1"))
    merged = peer.with_forward([("a", "2"), ("b", None)])
    assert merged.forward == (("tenant", "blue"), ("a", "2"), ("b", None))
