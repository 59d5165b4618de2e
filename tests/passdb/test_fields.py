"""routing_decision(): Dovecot's proxy fields, typed and validated."""

from __future__ import annotations

import random

import pytest

from mailproxy.passdb import AuthOutcome, PassdbResult, routing_decision, with_resolved_host
from mailproxy.passdb.fields import RoutingError, parse_duration
from mailproxy.protocols._secret import Secret


def result(fields: str = "", *, user: str = "alice", outcome=AuthOutcome.OK,
           master_user: str | None = None) -> PassdbResult:
    pairs = []
    for item in fields.split():
        k, _eq, v = item.partition("=")
        pairs.append((k, v))
    return PassdbResult(outcome, user, tuple(pairs), master_user=master_user)


@pytest.mark.parametrize("protocol,fields,port", [
    ("imap", "", 143),
    ("imap", "ssl=yes", 993),
    ("imap", "ssl=any-cert", 993),
    ("imap", "starttls=yes", 143),
    ("imap", "ssl=yes port=1993", 1993),
    ("imap", "port=1993 ssl=yes", 1993),
    ("pop3", "", 110),
    ("pop3", "ssl=yes", 995),
    ("submission", "", 587),
    ("submission", "ssl=yes", 465),
    ("managesieve", "", 4190),
    ("lmtp", "", 2424),                    # the LMTP listener's own port
    ("lmtp", "ssl=yes", 2424),
    ("lmtp", "protocol=lmtp", 24),
    ("lmtp", "protocol=smtp", 25),
    ("lmtp", "protocol=smtp port=2525", 2525),
    ("lmtp", "port=2525 protocol=smtp", 2525),
])
def test_default_ports(req, protocol: str, fields: str, port: int) -> None:
    r = req("alice", "pw", protocol=protocol, local_port=2424)
    d = routing_decision(result("proxy host=10.0.0.9 " + fields), r, listener_port=2424)
    assert d.port == port
    assert d.port_given == ("port=" in fields)


def test_lmtp_protocol(req) -> None:
    r = req("alice", None, protocol="lmtp")
    assert routing_decision(result("proxy host=h protocol=smtp"), r).protocol == "smtp"
    assert routing_decision(result("proxy host=h"), r).protocol == "lmtp"
    with pytest.raises(RoutingError) as e:
        routing_decision(result("proxy host=h protocol=http"), r)
    assert e.value.field == "protocol"


@pytest.mark.parametrize("fields,field", [
    ("port=abc", "port"), ("port=0", "port"), ("port=70000", "port"), ("port=-1", "port"),
    ("proxy_timeout=soon", "proxy_timeout"), ("proxy_timeout=5parsecs", "proxy_timeout"),
    ("ssl=no", "ssl"), ("starttls=maybe", "starttls"),
    ("hostip=10.0.0.300", "hostip"), ("source_ip=nope", "source_ip"),
    ("proxy_host_immediate_failure_after=x", "proxy_host_immediate_failure_after"),
    ("delay_until=tomorrow", "delay_until"),
])
def test_bad_values_name_the_field(req, fields: str, field: str) -> None:
    with pytest.raises(RoutingError) as e:
        routing_decision(result("proxy host=10.0.0.9 " + fields), req("alice", "pw"))
    assert e.value.field == field
    assert str(e.value).startswith(field + ":")


def test_proxy_without_host(req) -> None:
    for fields in ("proxy", "proxy_maybe", "proxy host="):
        with pytest.raises(RoutingError) as e:
            routing_decision(result(fields), req("alice", "pw"))
        assert e.value.field == "host"


def test_timeouts(req) -> None:
    r = req("alice", "pw")
    assert routing_decision(result("proxy host=h proxy_timeout=30"), r).proxy_timeout == 30
    assert routing_decision(result("proxy host=h proxy_timeout=500ms"), r).proxy_timeout \
        == 0.5
    assert routing_decision(result("proxy host=h"), r).proxy_timeout is None
    d = routing_decision(result("proxy host=h proxy_host_immediate_failure_after=1min"), r)
    assert d.host_immediate_failure_after == 60
    assert routing_decision(result("proxy host=h"), r).host_immediate_failure_after == 30
    lmtp = req("alice", None, protocol="lmtp")
    assert routing_decision(result("proxy host=h proxy_timeout=12"), lmtp).proxy_timeout == 12
    with pytest.raises(RoutingError):      # LMTP: whole seconds only (lmtp-proxy.c)
        routing_decision(result("proxy host=h proxy_timeout=500ms"), lmtp)
    assert parse_duration("2 min") == 120
    assert parse_duration("7", default_unit="ms") == 0.007


def test_the_common_fields(req) -> None:
    fields = ("proxy host=backend.example hostip=10.0.0.9 port=1143 source_ip=10.0.0.1 "
              "destuser=alice@corp proxy_mech=PLAIN proxy_nopipelining proxy_not_trusted "
              "proxy_noauth ssl=any-cert starttls=yes forward_a=1 user_alt=al forward_b=2 "
              "user_id=7 nologin reason=Go nodelay allow_nets=10.0.0.0/8,127.0.0.1 "
              "master=boss pass=backendpw")
    d = routing_decision(result(fields), req("alice", "clientpw"))
    assert d.proxy and not d.proxy_maybe
    assert (d.host, d.hostip, d.port, d.source_ip) == ("backend.example", "10.0.0.9", 1143,
                                                       "10.0.0.1")
    assert d.destuser == "alice@corp" and d.proxy_mech == "PLAIN"
    assert d.nopipelining and d.not_trusted and d.noauth
    assert d.ssl == "any-cert" and d.starttls == "yes"
    assert d.forward == (("a", "1"), ("b", "2"))
    assert d.user_fields == (("user_alt", "al"), ("user_id", "7"))
    assert d.nologin and d.reason == "Go" and d.nodelay
    assert d.allow_nets == ("10.0.0.0/8", "127.0.0.1")
    assert d.master == "boss"
    assert d.password is not None and d.password.reveal() == "backendpw"
    assert not d.needs_dns and not d.referral


def test_defaults_for_user_and_password(req) -> None:
    r = req("Alice", "clientpw")
    d = routing_decision(result("proxy host=10.0.0.9", user="alice"), r)
    assert d.destuser == "alice"                # the (rewritten) login user
    assert d.password is r.password             # the client's own password
    assert d.master is None and d.forward == () and d.user_fields == ()
    # a master login sends the master name along (auth_str_append_extra_fields)
    m = routing_decision(result("proxy host=h", master_user="boss"), r)
    assert m.master == "boss"
    # an empty master field is ignored
    assert routing_decision(result("proxy host=h master="), r).master is None
    # no password at all (e.g. a lookup)
    assert routing_decision(result("proxy host=h"), req("alice", None)).password is None


def test_user_fields_only_on_success(req) -> None:
    d = routing_decision(result("user_x=1", outcome=AuthOutcome.FAILED), req("a", "b"))
    assert d.user_fields == ()


def test_referral(req) -> None:
    d = routing_decision(result("host=imap2.example nologin reason=Try"), req("a", "b"))
    assert d.referral and not d.proxy and d.nologin and d.port == 143


def test_host_as_dns_name(req) -> None:
    d = routing_decision(result("proxy host=backend.example"), req("a", "b"))
    assert d.host == "backend.example" and d.hostip is None and d.needs_dns
    resolved = with_resolved_host(d, ["10.0.0.7", "10.0.0.8"], req("a", "b"))
    assert resolved.hostip == "10.0.0.7" and resolved.proxy
    assert routing_decision(result("proxy host=2001:db8::1"), req("a", "b")).hostip == \
        "2001:db8::1"


# --- proxy_maybe -------------------------------------------------------------------------

def test_proxy_maybe(req) -> None:
    r = req("alice", "pw", local_ip="10.0.0.1", local_port=143)
    # another host: proxy
    assert routing_decision(result("proxy_maybe host=10.0.0.2"), r).proxy
    # the address the client reached: log in locally (no proxying, proxy fields dropped)
    d = routing_decision(result("proxy_maybe host=10.0.0.1 destuser=x"), r)
    assert not d.proxy and d.proxy_maybe and d.host is None and d.destuser == "alice"
    # one of our addresses (listener / proxy_self): as a collection or a callable
    assert not routing_decision(result("proxy_maybe host=10.0.0.5"), r,
                                is_self={"10.0.0.5"}).proxy
    assert not routing_decision(result("proxy_maybe host=10.0.0.5"), r,
                                is_self=lambda ip, local: ip == "10.0.0.5").proxy
    assert routing_decision(result("proxy_maybe host=10.0.0.6"), r,
                            is_self=lambda ip, local: ip == "10.0.0.5").proxy
    # our address but another port: proxy
    assert routing_decision(result("proxy_maybe host=10.0.0.1 port=1143"), r).proxy
    assert not routing_decision(result("proxy_maybe host=10.0.0.1 port=143"), r).proxy
    # hostip decides over host
    assert not routing_decision(result("proxy_maybe host=me.example hostip=10.0.0.1"),
                                r).proxy
    # proxy_always with proxy_maybe to self: still not proxied here (no director)
    d = routing_decision(result("proxy_maybe proxy_always host=10.0.0.1"), r)
    assert not d.proxy and d.proxy_always


def test_proxy_maybe_with_dns_name(req) -> None:
    r = req("alice", "pw", local_ip="10.0.0.1", local_port=143)
    d = routing_decision(result("proxy_maybe host=mail.example"), r)
    assert d.proxy and d.needs_dns
    # any of the resolved addresses being ours means "self" (wire §0.6)
    local = with_resolved_host(d, ["10.0.0.9", "10.0.0.1"], r)
    assert not local.proxy
    remote = with_resolved_host(d, ["10.0.0.9"], r, is_self={"10.0.0.8"})
    assert remote.proxy and remote.hostip == "10.0.0.9"


# --- delay_until -------------------------------------------------------------------------

def test_delay_until(req) -> None:
    r = req("a", "b")
    now = 1_700_000_000.0
    assert routing_decision(result(f"delay_until={int(now) - 5}"), r, now=now).delay_until \
        is None
    d = routing_decision(result(f"delay_until={int(now) + 30}"), r, now=now)
    assert d.delay_until == now + 30
    rng = random.Random(1)
    seen = {routing_decision(result(f"delay_until={int(now) + 30}+5"), r, now=now,
                             rng=rng).delay_until for _ in range(50)}
    assert seen <= {now + 30 + i for i in range(5)} and len(seen) > 1
    # randomness is clamped to 300 s ahead
    d = routing_decision(result(f"delay_until={int(now) + 299}+100"), r, now=now,
                         rng=random.Random(3))
    assert d.delay_until is not None and d.delay_until <= now + 300
    with pytest.raises(RoutingError) as e:
        routing_decision(result(f"delay_until={int(now) + 301}"), r, now=now)
    assert e.value.field == "delay_until" and e.value.auth_failed


def test_decision_repr_has_no_password(req) -> None:
    d = routing_decision(result("proxy host=h pass=TopSecret1"), req("a", "Client2"))
    assert "TopSecret1" not in repr(d) and "Client2" not in repr(d)
    assert isinstance(d.password, Secret)
