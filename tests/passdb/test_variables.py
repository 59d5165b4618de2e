"""%-variable expansion. Expected values marked (dovecot) were produced by Dovecot
2.3.19.1 itself (``doveadm auth test`` on a passwd-file with these templates as extra
fields, user Alice@Example.com, rip 192.0.2.7, lip 10.0.0.1, lport 143, service imap)."""

from __future__ import annotations

import os
import socket

import pytest

from mailproxy.passdb.variables import (UnknownVariable, VariableError, auth_table, check,
                                        expand, has_variables, str_escape)


@pytest.fixture
def table():
    return auth_table(user="alice@example.com", original_user="Alice@Example.com",
                      service="imap", local_ip="10.0.0.1", remote_ip="192.0.2.7",
                      local_port=143, remote_port=50000, password="pw", mechanism="PLAIN",
                      session="sess1", passdb_id=2, fields={"a": "alice@example.com"})


@pytest.mark.parametrize("template,expected", [
    ("%u", "alice@example.com"),
    ("%Un", "ALICE"),                                          # (dovecot)
    ("%2.1n", "i"),                                            # (dovecot)
    ("%{passdb:a}", "alice@example.com"),                      # (dovecot)
    ("%{md5:user}", "c160f8cc69a4f0bf2b0362752353d060"),       # (dovecot)
    ("%r/%l/%s", "192.0.2.7/10.0.0.1/imap"),                   # (dovecot)
    ("%{if;%s;eq;imap;yes;no}", "yes"),                        # (dovecot)
    ("%Hu", "2481bd"),                                         # (dovecot)
    ("%256Nu", "bf"),                                          # (dovecot)
    ("%{sha1;truncate=12:user}", "0fc2"),                      # (dovecot)
    ("%0.-3n", "al"),                                          # (dovecot)
    ("%-2u", "al"),                                            # (dovecot)
    ("%04d", "example.com"),                                   # (dovecot)
    ("%{auth_user}", "Alice@Example.com"),                     # (dovecot)
    ("%{domain_first}", "example.com"),                        # (dovecot)
    ("%{passdb:zz:dflt}", "dflt"),                             # (dovecot)
    ("%E{user}", "alice@example.com"),                         # (dovecot)
    ("%{sha256;rounds=2,format=base64:user}",
     "XqqfRwQm3iNK1M4Vq3fPhMEuUEEAySgWGqq0xYb33jA="),          # (dovecot)
    ("%1.04n", "lice"),                                        # (dovecot)
    ("%Xa", "8f"),                                             # (dovecot)
    ("%Mu", "c160f8cc69a4f0bf2b0362752353d060"),               # (dovecot)
    ("%Du", "alice@example,dc=com"),                           # (dovecot)
    ("%{passdb:a}x", "alice@example.comx"),                    # (dovecot)
    ("%n %d %{username} %{domain} %{service}", "alice example.com alice example.com imap"),
    ("%{rip} %{lip} %{rport} %{lport} %b %a", "192.0.2.7 10.0.0.1 50000 143 50000 143"),
    ("%{remote_ip} %{local_ip} %{remote_port} %{local_port}",
     "192.0.2.7 10.0.0.1 50000 143"),
    ("%{session} %m %{mech} %{mechanism}", "sess1 PLAIN PLAIN PLAIN"),
    ("%w %{password}", "pw pw"),
    ("%!", "2"),
    ("%{orig_user} %{orig_username} %{orig_domain}", "Alice@Example.com Alice Example.com"),
    ("%Lu %U{username} %L{domain}", "alice@example.com ALICE example.com"),
    ("%Ru", "moc.elpmaxe@ecila"),
    ("100%%", "100%"),
    ("%%u", "%u"),
    ("trailing%", "trailing"),
    ("%{userdb:x:def}", "def"),
    ("%h|%k|%c", "||"),
    ("%{master_user}|%{login_user}", "|"),
    ("%2u", "al"),
    ("%-3.2u", "co"),
    ("%05b", "50000"),
    ("%08b", "00050000"),
    ("%{if;%a;>;100;big;small}", "big"),
    ("%{if;%a;<;100;big}", ""),
    ("%{if;%u;*;*@example.com;ours;theirs}", "ours"),
    ("%{if;%u;~;^al;re;no}", "re"),
    ("%{if;%n;ne;bob;not bob;bob}", "not bob"),
    ("%T{passdb:a}", "alice@example.com"),
])
def test_expand(table, template: str, expected: str) -> None:
    assert expand(template, table) == expected


def test_builtins(table) -> None:
    assert expand("%{pid} %p", table) == f"{os.getpid()} {os.getpid()}"
    assert expand("%{hostname}", table) == socket.gethostname()
    assert expand("%{uid}", table) == str(os.geteuid())
    os.environ["MAILPROXY_TEST_VAR"] = "env-value"
    try:
        assert expand("%{env:MAILPROXY_TEST_VAR}", table) == "env-value"
    finally:
        del os.environ["MAILPROXY_TEST_VAR"]
    assert expand("%{env:MAILPROXY_NO_SUCH_VAR}", table) == ""


def test_no_domain(table) -> None:
    t = auth_table(user="bob", service="pop3")
    assert expand("%u|%n|%d|%{domain_first}|%l|%r", t) == "bob|bob||||"


def test_unknown_variables_fail_like_dovecot(table) -> None:
    with pytest.raises(UnknownVariable) as e:
        expand("x%zy", table)
    assert "Unknown variable '%z'" in str(e.value)
    assert e.value.partial == "xUNSUPPORTED_VARIABLE_zy"
    with pytest.raises(UnknownVariable) as e:
        expand("%{nosuch}", table)
    assert e.value.partial == "UNSUPPORTED_VARIABLE_nosuch"
    with pytest.raises(UnknownVariable):
        expand("%{sha256:nosuch}", table)
    with pytest.raises(VariableError):
        expand("%{if;a;==;1;x;y}", table)           # not a number
    with pytest.raises(VariableError):
        expand("%{if;a;??;1;x;y}", table)
    with pytest.raises(VariableError):
        expand("%{if;a;eq}", table)


def test_check_finds_unknown_names_only() -> None:
    check("%u %n %{passdb:x} %{env:HOME} %{if;%a;==;1;a;b} %{sha256:user} %Lu %%")
    for bad in ("%z", "%{foo}", "%{sha1:nosuch}", "%{if;%q;eq;1;a;b}"):
        with pytest.raises(UnknownVariable):
            check(bad)


def test_escape(table) -> None:
    t = auth_table(user="o'brien\"x\\", service="imap")
    assert expand("%u", t, escape=str_escape) == "o\\'brien\\\"x\\\\"
    assert str_escape("a'b") == "a\\'b"
    assert expand("%E{user}", t) == "o\\'brien\\\"x\\\\"


def test_has_variables() -> None:
    assert has_variables("/etc/%d/passwd")
    assert not has_variables("/etc/100%%/passwd")
    assert not has_variables("/etc/passwd")
