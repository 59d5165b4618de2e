"""The TOML contract of shared/interface.md: defaults, and FILE:LINE: KEY errors."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest

from mailproxy.config import Address, ConfigErrors, load_config, parse_address

MINIMAL = """
[[listener]]
protocol = "imap"
bind = "127.0.0.1:10143"
tls = "none"

[[passdb]]
driver = "passwd-file"
args = "users"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "proxy.toml"
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    return [str(e) for e in info.value.errors]


def test_minimal_config_gets_interface_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.listeners[0].bind == Address("127.0.0.1", 10143)
    assert cfg.listeners[0].tls == "none"
    assert cfg.proxy_timeout == 30.0 and cfg.max_reconnects == 3
    assert cfg.login_greeting == "trio-mailproxy ready."
    assert cfg.auth.mechanisms == ("PLAIN", "LOGIN")
    assert cfg.auth.disable_plaintext_auth is True and cfg.auth.failure_delay == 2.0
    assert cfg.limits.login_timeout == 180 and cfg.limits.max_line_length == 1024
    assert cfg.limits.max_literal_size == 8192
    assert cfg.passdbs[0].driver == "passwd-file" and cfg.passdbs[0].args == "users"
    assert cfg.base_dir == tmp_path


def test_every_top_level_key_is_read(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, """
        trusted_networks = ["10.0.0.0/8", "::1/128"]
        haproxy_trusted_networks = ["192.0.2.0/24"]
        source_ips = ["127.0.0.2", "?localhost"]
        proxy_self = ["127.0.0.9"]
        max_disconnect_delay = 0
        proxy_timeout = 2.5
        max_reconnects = 1
        hostname = "proxy.example"
        login_greeting = "Hello."
        shutdown_grace = 1
        workers = 2
        admin_socket = "admin.sock"
        imap_id_retain = true
        imap_capability = "IMAP4rev1"
        log_format = "json"
        log_level = "debug"
        [[listener]]
        bind = "[::1]:1143"
        tls = "none"
        [[passdb]]
        driver = "static"
        args = "proxy=y host=127.0.0.1 nopassword=y"
        [auth]
        mechanisms = ["plain"]
        master_user_separator = "*"
        failure_delay = 0
        [limits]
        login_timeout = 3
        """))
    assert cfg.trusted_networks == (ipaddress.ip_network("10.0.0.0/8"),
                                    ipaddress.ip_network("::1/128"))
    assert cfg.listeners[0].bind == Address("::1", 1143)
    assert cfg.listeners[0].protocol == "imap"
    assert cfg.admin_socket == (tmp_path / "admin.sock").resolve() or \
        cfg.admin_socket == tmp_path / "admin.sock"
    assert cfg.auth.mechanisms == ("PLAIN",) and cfg.auth.master_user_separator == "*"
    assert cfg.limits.login_timeout == 3.0 and cfg.proxy_timeout == 2.5
    assert cfg.source_ips == ("127.0.0.2", "?localhost") and cfg.workers == 2


def test_unknown_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[auth]\nfailure_dealy = 3\n")
    assert errors_of(path) == [f"{path}:12: auth.failure_dealy: unknown key"]


def test_wrong_types_are_reported_each_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        proxy_timeout = "30"
        max_reconnects = true
        [[listener]]
        bind = "127.0.0.1"
        tls = "sometimes"
        [[passdb]]
        driver = "passwd-file"
        args = "users"
        """)
    errs = errors_of(path)
    assert errs[0] == f"{path}:1: proxy_timeout: expected a number of seconds, got str"
    assert errs[1] == f"{path}:2: max_reconnects: expected an integer, got a boolean"
    assert errs[2].startswith(f"{path}:4: listener.bind: expected HOST:PORT")
    assert errs[3].startswith(f"{path}:5: listener.tls: must be one of none, starttls, implicit")


def test_second_listener_errors_point_at_its_own_lines(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + """
        [[listener]]
        bind = "127.0.0.1:993"
        tls = "implicit"
        colour = "blue"
        """)
    errs = errors_of(path)
    assert f"{path}:14: listener.colour: unknown key" in errs
    assert f"{path}:13: listener.tls: a TLS listener needs [tls] cert_file and key_file" in errs


def test_toml_syntax_error_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "proxy_timeout = = 3\n")
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:1: toml: ")


def test_missing_file_and_required_tables(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.toml")[0].startswith(f"{tmp_path / 'nope.toml'}:0: file:")
    errs = errors_of(write(tmp_path, "hostname = 'x'\n"))
    assert any("listener: at least one [[listener]] is required" in e for e in errs)
    assert any("passdb: at least one (non-master) [[passdb]] is required" in e for e in errs)


def test_tls_files_must_exist_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    path = write(tmp_path, MINIMAL + '\n[tls]\ncert_file = "cert.pem"\nkey_file = "key.pem"\n')
    assert errors_of(path) == [f"{path}:13: tls.key_file: no such file: {tmp_path / 'key.pem'}"]


def test_protocols_not_yet_served_are_refused_clearly(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('protocol = "imap"', 'protocol = "pop3"'))
    (err,) = errors_of(path)
    assert err == (f"{path}:3: listener.protocol: protocol 'pop3' is not implemented yet "
                   "(supported: imap)")


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:143", Address("127.0.0.1", 143)),
    ("[::1]:993", Address("::1", 993)),
    ("mail.example.org:4190", Address("mail.example.org", 4190)),
])
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("bad", ["127.0.0.1", "::1:143", "host:99999", ":143"])
def test_parse_address_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_address(bad)


@pytest.mark.parametrize("snippet,key", [
    ("max_disconnect_delay = 5\n", "max_disconnect_delay"),
    ("[metrics]\nbind = '127.0.0.1:9143'\n", "metrics.bind"),
    ("[cluster]\nredis_url = 'redis://127.0.0.1:6379/0'\n", "cluster.redis_url"),
])
def test_features_not_built_yet_are_refused_not_ignored(tmp_path: Path, snippet: str,
                                                         key: str) -> None:
    path = write(tmp_path, snippet + MINIMAL if "[" not in snippet else MINIMAL + snippet)
    (err,) = errors_of(path)
    assert f": {key}: " in err and "not implemented yet" in err


def test_proxy_protocol_listener_is_refused_until_built(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('tls = "none"', 'tls = "none"\nproxy_protocol = true'))
    (err,) = errors_of(path)
    assert err == f"{path}:6: listener.proxy_protocol: the HAProxy PROXY header is not " \
                  "implemented yet"
