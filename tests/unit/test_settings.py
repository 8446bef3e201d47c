"""Unit tests for proxy.settings: defaults, environment, precedence and error messages."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from proxy.flags import FLAGS, PRIVATE_NETWORKS, Address, Flag
from proxy.settings import Settings, SettingsError, parse_settings

DEFAULTS: list[tuple[str, object]] = [
    ("listen", Address("0.0.0.0", 8000)),
    ("upstream", Address("127.0.0.1", 8080)),
    ("admin", Address("0.0.0.0", 9901)),
    ("mode", "http"),
    ("loop", "auto"),
    ("idle_timeout_s", 75.0),
    ("header_timeout_s", 10.0),
    ("body_timeout_s", 60.0),
    ("upstream_connect_timeout_s", 2.0),
    ("upstream_timeout_s", 60.0),
    ("upstream_idle_timeout_s", 2.0),
    ("max_header_bytes", 65536),
    ("max_response_header_bytes", 65536),
    ("max_connections", 1000),
    ("readiness_path", None),
    ("propagation_window_s", 10.0),
    ("adaptive_window", False),
    ("min_propagation_window_s", 1.0),
    ("drain_timeout_s", 15.0),
    ("termination_grace_period_s", 30.0),
    ("max_requests_per_connection", 1000),
    ("max_connection_age_s", 0.0),
    ("tcp_rotate_idle_s", 0.0),
    ("tunnel_drain_timeout", None),
    ("rotation_jitter", 0.1),
    ("readiness_on_drain", "fail"),
    ("log_level", "info"),
    ("log_format", "text"),
    ("access_log", False),
    ("drain_token", None),
    ("drain_token_file", None),
    ("trusted_proxies", tuple(ipaddress.ip_network(n) for n in PRIVATE_NETWORKS)),
    ("allow_underscores_in_headers", False),
    ("max_header_count", 100),
    ("max_request_line_bytes", 8192),
]


@pytest.mark.parametrize(("field", "expected"), DEFAULTS)
def test_default_value(field: str, expected: object) -> None:
    value = getattr(parse_settings([], {}), field)
    assert value == expected
    assert type(value) is type(expected)


def test_defaults_table_covers_every_settings_field() -> None:
    assert {f.name for f in dataclasses.fields(Settings)} == {name for name, _ in DEFAULTS}


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.name)
def test_flag_default_equals_parsed_default(flag: Flag) -> None:
    """Passing a flag's documented default explicitly (or via env) changes nothing."""
    defaults = parse_settings([], {})
    if not flag.is_switch:
        assert parse_settings([flag.name, flag.default], {}) == defaults
    assert parse_settings([], {flag.env_var: flag.default}) == defaults


ENV_CASES: list[tuple[str, str, str, object]] = [
    ("DRAIN_PROXY_IDLE_TIMEOUT", "5", "idle_timeout_s", 5.0),
    ("DRAIN_PROXY_LISTEN", "127.0.0.1:0", "listen", Address("127.0.0.1", 0)),
    ("DRAIN_PROXY_UPSTREAM", "unix:/tmp/app.sock", "upstream", Address(unix_path="/tmp/app.sock")),
    ("DRAIN_PROXY_LOOP", "asyncio", "loop", "asyncio"),
    ("DRAIN_PROXY_MAX_REQUESTS_PER_CONNECTION", "0", "max_requests_per_connection", 0),
    ("DRAIN_PROXY_MAX_CONNECTION_AGE", "30.5", "max_connection_age_s", 30.5),
    ("DRAIN_PROXY_READINESS_PATH", "/healthz", "readiness_path", "/healthz"),
    ("DRAIN_PROXY_READINESS_ON_DRAIN", "keep", "readiness_on_drain", "keep"),
    ("DRAIN_PROXY_ROTATION_JITTER", "0.5", "rotation_jitter", 0.5),
    ("DRAIN_PROXY_ACCESS_LOG", "yes", "access_log", True),
    ("DRAIN_PROXY_ACCESS_LOG", " OFF ", "access_log", False),
    ("DRAIN_PROXY_TERMINATION_GRACE_PERIOD", "45", "termination_grace_period_s", 45.0),
]


@pytest.mark.parametrize(("env_var", "raw", "field", "expected"), ENV_CASES)
def test_env_var_is_read(env_var: str, raw: str, field: str, expected: object) -> None:
    assert getattr(parse_settings([], {env_var: raw}), field) == expected


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.name)
def test_every_flag_has_upper_snake_env_var(flag: Flag) -> None:
    assert flag.env_var == "DRAIN_PROXY_" + flag.name[2:].replace("-", "_").upper()


def test_os_environ_is_used_when_environ_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRAIN_PROXY_HEADER_TIMEOUT", "3")
    assert parse_settings([]).header_timeout_s == 3.0


@pytest.mark.parametrize(
    ("argv", "env", "field", "expected"),
    [
        (["--idle-timeout", "7"], {"DRAIN_PROXY_IDLE_TIMEOUT": "5"}, "idle_timeout_s", 7.0),
        # The env value is never parsed when the flag is given, so a bad one is harmless.
        (["--idle-timeout", "7"], {"DRAIN_PROXY_IDLE_TIMEOUT": "abc"}, "idle_timeout_s", 7.0),
        (["--readiness-path", ""], {"DRAIN_PROXY_READINESS_PATH": "/ok"}, "readiness_path", None),
        (["--loop", "uvloop"], {"DRAIN_PROXY_LOOP": "asyncio"}, "loop", "uvloop"),
        (["--access-log"], {"DRAIN_PROXY_ACCESS_LOG": "false"}, "access_log", True),
    ],
)
def test_flag_beats_env_var(
    argv: list[str], env: dict[str, str], field: str, expected: object
) -> None:
    assert getattr(parse_settings(argv, env), field) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/tmp/app.sock", Address(unix_path="/tmp/app.sock")),
        ("[::1]:80", Address("::1", 80)),
        ("localhost:65535", Address("localhost", 65535)),
        ("10.1.2.3:0", Address("10.1.2.3", 0)),
    ],
)
def test_upstream_forms(text: str, expected: Address) -> None:
    assert parse_settings(["--upstream", text], {}).upstream == expected


def test_ipv6_listen() -> None:
    listen = parse_settings(["--listen", "[::1]:80"], {}).listen
    assert listen == Address("::1", 80)
    assert str(listen) == "[::1]:80"


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address("::1", 80), "[::1]:80"),
        (Address("127.0.0.1", 8080), "127.0.0.1:8080"),
        (Address(unix_path="/tmp/app.sock"), "unix:/tmp/app.sock"),
    ],
)
def test_address_str(address: Address, text: str) -> None:
    assert str(address) == text


BAD_VALUES: list[tuple[list[str], dict[str, str], str, str]] = [
    (["--idle-timeout", "abc"], {}, "--idle-timeout", "abc"),
    (["--idle-timeout", "-1"], {}, "--idle-timeout", "-1"),
    (["--idle-timeout", "0"], {}, "--idle-timeout", "0"),
    (["--idle-timeout", "nan"], {}, "--idle-timeout", "nan"),
    (["--idle-timeout", "inf"], {}, "--idle-timeout", "inf"),
    (["--drain-timeout", "-0.5"], {}, "--drain-timeout", "-0.5"),
    (["--listen", "nope"], {}, "--listen", "nope"),
    (["--listen", "1.2.3.4:99999"], {}, "--listen", "99999"),
    (["--listen", ":80"], {}, "--listen", ":80"),
    (["--admin", "host:-1"], {}, "--admin", "host:-1"),
    (["--upstream", "unix:relative"], {}, "--upstream", "unix:relative"),
    (["--mode", "udp"], {}, "--mode", "udp"),
    (["--tunnel-drain-timeout", "-1"], {}, "--tunnel-drain-timeout", "-1"),
    (["--loop", "foo"], {}, "--loop", "foo"),
    (["--rotation-jitter", "0.9"], {}, "--rotation-jitter", "0.9"),
    (["--rotation-jitter", "-0.1"], {}, "--rotation-jitter", "-0.1"),
    (["--max-header-bytes", "10"], {}, "--max-header-bytes", "10"),
    (["--max-response-header-bytes", "1023"], {}, "--max-response-header-bytes", "1023"),
    (["--max-connections", "0"], {}, "--max-connections", "0"),
    (["--max-requests-per-connection", "1.5"], {}, "--max-requests-per-connection", "1.5"),
    (["--readiness-path", "healthz"], {}, "--readiness-path", "healthz"),
    (["--readiness-path", "/a b"], {}, "--readiness-path", "/a b"),
    (["--log-level", "trace"], {}, "--log-level", "trace"),
    ([], {"DRAIN_PROXY_ACCESS_LOG": "maybe"}, "DRAIN_PROXY_ACCESS_LOG", "maybe"),
    ([], {"DRAIN_PROXY_IDLE_TIMEOUT": "abc"}, "DRAIN_PROXY_IDLE_TIMEOUT", "abc"),
    ([], {"DRAIN_PROXY_LISTEN": ""}, "DRAIN_PROXY_LISTEN", "''"),
]


@pytest.mark.parametrize(("argv", "env", "name", "bad"), BAD_VALUES)
def test_bad_value_message(argv: list[str], env: dict[str, str], name: str, bad: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, env)
    message = str(caught.value)
    assert message.startswith(name + ":")
    assert bad in message
    assert "allowed" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("flag", "bad"), [("--listen", "1.2.3.4:²"), ("--max-connections", "²")]
)
def test_unicode_digit_message_says_what_is_allowed(flag: str, bad: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings([flag, bad], {})
    assert "allowed" in str(caught.value)


@pytest.mark.parametrize("key", ["DRAIN_PROXY_IDLE_TIMEOUTS", "DRAIN_PROXY_", "DRAIN_PROXY_X"])
def test_unknown_env_var_is_refused(key: str) -> None:
    with pytest.raises(SettingsError, match=key + ":"):
        parse_settings([], {key: "1"})


def test_unrelated_env_vars_are_ignored() -> None:
    env = {"PATH": "/bin", "IDLE_TIMEOUT": "x", "drain_proxy_idle_timeout": "x"}
    assert parse_settings([], env) == parse_settings([], {})


@pytest.mark.parametrize(
    "argv", [["--nope"], ["--idle-timeout"], ["positional"], ["--access-log", "true"]]
)
def test_unknown_flag_or_bad_usage_is_refused(argv: list[str]) -> None:
    with pytest.raises(SettingsError):
        parse_settings(argv, {})


def test_access_log_switch() -> None:
    assert parse_settings(["--access-log"], {}).access_log is True


@pytest.mark.parametrize(
    ("argv", "budget"),
    [
        ([], 27.0),
        (["--propagation-window", "3", "--drain-timeout", "4"], 9.0),
        (["--propagation-window", "0", "--drain-timeout", "0"], 2.0),
    ],
)
def test_drain_budget(argv: list[str], budget: float) -> None:
    assert parse_settings(argv, {}).drain_budget_s == pytest.approx(budget)


def test_settings_are_frozen() -> None:
    settings = parse_settings([], {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.idle_timeout_s = 1.0  # type: ignore[misc]


def test_kubernetes_service_link_variables_are_not_settings() -> None:
    """kubelet injects these for a Service named drain-proxy; they must not stop start-up."""
    links = {"DRAIN_PROXY_SERVICE_HOST": "10.0.0.1", "DRAIN_PROXY_SERVICE_PORT": "8000",
             "DRAIN_PROXY_SERVICE_PORT_HTTP": "8000", "DRAIN_PROXY_PORT": "tcp://10.0.0.1:8000",
             "DRAIN_PROXY_PORT_8000_TCP": "tcp://10.0.0.1:8000",
             "DRAIN_PROXY_PORT_8000_TCP_ADDR": "10.0.0.1",
             "DRAIN_PROXY_ADMIN_SERVICE_HOST": "10.0.0.2"}
    assert parse_settings([], links) == parse_settings([], {})


def test_the_build_switch_is_not_a_setting() -> None:
    """DRAIN_PROXY_NO_EXTENSIONS is read by setup.py; left in a shell it must not stop start-up."""
    assert parse_settings([], {"DRAIN_PROXY_NO_EXTENSIONS": "1"}) == parse_settings([], {})


@pytest.mark.parametrize(("listen", "upstream"), [
    ("0.0.0.0:8000", "127.0.0.1:8000"), ("0.0.0.0:8000", "localhost:8000"),
    ("127.0.0.1:9000", "127.0.0.1:9000"), ("[::]:8000", "[::1]:8000"),
    ("0.0.0.0:8000", "0.0.0.0:8000"),
])
def test_an_upstream_that_is_the_proxy_itself_stops_start_up(listen: str, upstream: str) -> None:
    with pytest.raises(SettingsError, match=r"^--upstream .*drain-proxy's own --listen"):
        parse_settings(["--listen", listen, "--upstream", upstream], {})


@pytest.mark.parametrize(("listen", "upstream"), [
    ("0.0.0.0:8000", "127.0.0.1:8080"), ("10.0.0.1:8000", "127.0.0.1:8000"),
    ("0.0.0.0:8000", "app.internal:8000"), ("127.0.0.1:0", "127.0.0.1:0"),
])
def test_an_upstream_on_another_port_or_host_is_fine(listen: str, upstream: str) -> None:
    settings = parse_settings(["--listen", listen, "--upstream", upstream], {})
    assert str(settings.upstream) == upstream


@pytest.mark.parametrize(("value", "expected"), [
    ("none", ()), ("10.1.0.0/16", ("10.1.0.0/16",)),
    ("10.1.0.0/16, fd00::/8", ("10.1.0.0/16", "fd00::/8")), ("192.168.1.7", ("192.168.1.7/32",)),
])
def test_trusted_proxies_are_networks(value: str, expected: tuple[str, ...]) -> None:
    settings = parse_settings(["--trusted-proxies", value], {})
    assert tuple(str(n) for n in settings.trusted_proxies) == expected


@pytest.mark.parametrize("value", ["everyone", "10.0.0.0/33", "private,10.0.0.0/8", ""])
def test_bad_trusted_proxies_are_one_line(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^--trusted-proxies: invalid value .*allowed: "):
        parse_settings(["--trusted-proxies", value], {})


# -- issue 23: what a new user tripped on ---------------------------------------------------------
@pytest.mark.parametrize(("argv", "env", "name", "right"), [
    (["--upstream", "http://127.0.0.1:8080"], {}, "--upstream", "127.0.0.1:8080"),
    ([], {"DRAIN_PROXY_UPSTREAM": "http://127.0.0.1:8080"}, "DRAIN_PROXY_UPSTREAM",
     "127.0.0.1:8080"),
    (["--upstream", "https://app.internal:8443/api"], {}, "--upstream", "app.internal:8443"),
    (["--upstream", "127.0.0.1:8080/healthz"], {}, "--upstream", "127.0.0.1:8080"),
    (["--upstream", "tcp://[::1]:6379"], {}, "--upstream", "[::1]:6379"),
    (["--listen", "http://0.0.0.0:8000"], {}, "--listen", "0.0.0.0:8000"),
    (["--admin", "http://0.0.0.0:9901/"], {}, "--admin", "0.0.0.0:9901"),
])
def test_a_scheme_or_path_in_an_address_is_refused_with_the_right_form(
        argv: list[str], env: dict[str, str], name: str, right: str) -> None:
    """A URL was accepted as HOST:PORT with "http://127.0.0.1" as the host: every request then
    got 502.  The one line names the value and shows the address the user meant."""
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, env)
    message = str(caught.value)
    assert message.startswith(f"{name}: invalid value ") and "\n" not in message
    assert message.endswith(f"no scheme or path: use {right}"), message


@pytest.mark.parametrize(("env_var", "raw", "field", "expected"), [
    ("DRAIN_PROXY_ACCESS_LOG", "TRUE", "access_log", True),
    ("DRAIN_PROXY_ACCESS_LOG", "On", "access_log", True),
    ("DRAIN_PROXY_ACCESS_LOG", "1", "access_log", True),
    ("DRAIN_PROXY_ACCESS_LOG", "No", "access_log", False),
    ("DRAIN_PROXY_MODE", "TCP", "mode", "tcp"),
    ("DRAIN_PROXY_LOG_LEVEL", "INFO", "log_level", "info"),
    ("DRAIN_PROXY_LOG_FORMAT", " Json ", "log_format", "json"),
    ("DRAIN_PROXY_LOOP", "AsyncIO", "loop", "asyncio"),
    ("DRAIN_PROXY_READINESS_ON_DRAIN", "KEEP", "readiness_on_drain", "keep"),
    ("DRAIN_PROXY_TRUSTED_PROXIES", "None", "trusted_proxies", ()),
])
def test_words_are_read_by_one_rule_whatever_their_case(
        env_var: str, raw: str, field: str, expected: object) -> None:
    """Booleans and choices alike: any case, spaces around ignored; the flag reads the same."""
    assert getattr(parse_settings([], {env_var: raw}), field) == expected
    flag = next(f for f in FLAGS if f.env_var == env_var)
    if not flag.is_switch:
        assert getattr(parse_settings([flag.name, raw], {}), field) == expected


@pytest.mark.parametrize(("argv", "env", "allowed"), [
    ([], {"DRAIN_PROXY_ACCESS_LOG": "banana"},
     "allowed: true, false, yes, no, on, off, 1 or 0 (any case)"),
    ([], {"DRAIN_PROXY_ALLOW_UNDERSCORES_IN_HEADERS": "si"},
     "allowed: true, false, yes, no, on, off, 1 or 0 (any case)"),
    ([], {"DRAIN_PROXY_MODE": "udp"}, "allowed: http or tcp (any case)"),
    (["--log-level", "trace"], {}, "allowed: debug, info, warning or error (any case)"),
])
def test_the_error_lists_exactly_what_is_accepted(
        argv: list[str], env: dict[str, str], allowed: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, env)
    assert str(caught.value).endswith(allowed), str(caught.value)


@pytest.mark.parametrize(("key", "meant"), [
    ("DRAIN_PROXY_LISTN", "DRAIN_PROXY_LISTEN"),
    ("DRAIN_PROXY_UPSTREM", "DRAIN_PROXY_UPSTREAM"),
    ("DRAIN_PROXY_PROPAGATION_WINDOWS", "DRAIN_PROXY_PROPAGATION_WINDOW"),
])
def test_an_unknown_variable_suggests_the_closest_name_in_one_short_line(
        key: str, meant: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings([], {key: "1"})
    message = str(caught.value)
    assert message == (f"{key}: unknown setting; did you mean {meant}? "
                       f"(drain-proxy --help lists every DRAIN_PROXY_* name)")


def test_an_unknown_variable_like_no_other_points_to_the_list() -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings([], {"DRAIN_PROXY_X": "1"})
    assert str(caught.value) == ("DRAIN_PROXY_X: unknown setting "
                                 "(drain-proxy --help lists every DRAIN_PROXY_* name)")
