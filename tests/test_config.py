"""The daemon's configuration file: defaults, every key good and bad, legacy
mode, command-line overrides, errors, and the ``to_toml`` round trip.

Plain synchronous tests: loading a configuration does no Trio I/O. Files are
written to temporary directories; nothing outside them is created.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import ssl
import string
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from hypothesis import given, strategies as st

from trioctl import TrioctlError
from trioctl._config import (
    COMMAND_LINE,
    KEYS,
    LEGACY_DEFAULTS,
    AuthConfig,
    ConfigError,
    DaemonConfig,
    LogConfig,
    ServerConfig,
    TlsConfig,
    default_run_dir,
    default_state_dir,
    dump_toml,
    load_config,
    parse_listen,
)
from trioctl._driver import DriverConfig
from trioctl._pools import PoolLimits, check_limits

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

PATH_KEYS = ("driver.state_dir", "driver.run_dir", "auth.tokens_file", "tls.cert", "tls.key")
TEXTUAL = {
    *PATH_KEYS,
    "mode",
    "server.listen",
    "driver.reconnect",
    "driver.backend",
    "driver.qemu_user",
}
TEXTUAL |= {"log.level", "log.format"}
"""Keys whose TOML value is a string: a string override is never read as a literal."""

# Every default, written out once more so that a changed default fails here.
DEFAULTS: dict[str, object] = {
    "mode": "default",
    "server.listen": "127.0.0.1:16509",
    "server.max_clients": 5000,
    "server.max_client_requests": 5,
    "server.keepalive_interval": 5.0,
    "server.keepalive_count": 5,
    "server.max_message_size": 4194304,
    "server.shutdown_grace": 2.0,
    "server.event_queue": 256,
    "server.max_batch": 100,
    "server.max_output_bytes": 8388608,
    "server.handshake_timeout": 5.0,
    "server.max_anonymous_clients": 20,
    "server.admin_max_clients": 5000,
    "server.reserved_write_clients": 50,
    "server.allowed_origins": (),
    "server.metrics_access": "loopback",
    "pools.min_workers": 5,
    "pools.max_workers": 20,
    "pools.prio_workers": 5,
    "pools.max_pending": 1000,
    "driver.max_queued": 32,  # trioctl._jobs.DEFAULT_MAX_QUEUED
    "driver.max_queued_queries": 32,  # trioctl._jobs.DEFAULT_MAX_QUEUED_QUERIES
    "driver.query_lane": True,
    "driver.job_wait_timeout": 30.0,
    "driver.monitor_timeout": 5.0,
    "driver.monitor_fail_fast": True,
    "driver.probe_interval": 1.0,
    "driver.destroy_grace": 1.0,
    "driver.shutdown_timeout": 30.0,
    "driver.start_timeout": 10.0,
    "driver.reconnect": "parallel",
    "driver.reconnect_timeout": 10.0,
    "driver.event_buffer": 1024,
    "driver.max_events_per_second": 100.0,
    "driver.backend": "sim",
    "driver.emulators": {},
    "driver.machines": ("none", "pc", "q35", "isapc", "microvm", "pc-i440fx-*", "pc-q35-*"),
    "driver.storage_dirs": (),
    "driver.qemu_user": "",
    "driver.max_domains": 10000,
    "auth.required": True,
    "tls.cert": None,
    "tls.key": None,
    "log.level": "info",
    "log.format": "human",
}


def get(config: DaemonConfig, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def document(dotted: str, literal: str) -> str:
    """A TOML file setting one key."""
    table, _, key = dotted.rpartition(".")
    if not table:
        return f"{key} = {literal}\n"
    return f"[{table}]\n{key} = {literal}\n"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory: keeps every test's default paths inside tmp_path."""
    return tmp_path / "state"


Writer = Callable[[str], Path]


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """Write ``tmp_path/config.toml``. (Loading never creates anything: the
    default directories are only computed and, if they exist, checked.)"""

    def write(text: str) -> Path:
        path = tmp_path / "config.toml"
        path.write_text(text, encoding="utf-8")
        return path

    return write


# -- defaults -------------------------------------------------------------------------


def test_every_default() -> None:
    config = load_config(None)
    assert set(DEFAULTS) | {"driver.state_dir", "driver.run_dir", "auth.tokens_file"} == set(KEYS)
    for dotted, value in DEFAULTS.items():
        got = get(config, dotted)
        assert got == value and type(got) is type(value), dotted
    assert config.driver.state_dir == default_state_dir()
    assert config.driver.run_dir == default_run_dir(config.driver.state_dir)
    assert config.auth.tokens_file == config.driver.state_dir / "tokens.json"
    assert not config.legacy
    assert not config.tls.enabled
    assert config.tls.server_context() is None


def test_runtime_dir_default_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert load_config(None).driver.run_dir == tmp_path / "trioctl"


@pytest.mark.parametrize(
    ("environ", "root", "expected"),
    [
        ({"XDG_STATE_HOME": "/xdg/state", "HOME": "/home/u"}, True, "/var/lib/trioctl"),
        ({"XDG_STATE_HOME": "/xdg/state", "HOME": "/home/u"}, False, "/xdg/state/trioctl"),
        ({"HOME": "/home/u"}, False, "/home/u/.local/state/trioctl"),
        # A relative XDG path is invalid and ignored (XDG base directory spec).
        ({"XDG_STATE_HOME": "rel", "HOME": "/home/u"}, False, "/home/u/.local/state/trioctl"),
        ({"XDG_STATE_HOME": "", "HOME": "/home/u"}, False, "/home/u/.local/state/trioctl"),
    ],
)
def test_default_state_dir(environ: dict[str, str], root: bool, expected: str) -> None:
    assert default_state_dir(environ, root=root) == Path(expected)


@pytest.mark.parametrize(
    ("environ", "root", "expected"),
    [
        ({"XDG_RUNTIME_DIR": "/run/user/7"}, False, "/run/user/7/trioctl"),
        ({"XDG_RUNTIME_DIR": "/run/user/0"}, True, "/run/user/0/trioctl"),
        ({}, True, "/run/trioctl"),
        ({}, False, "/st/run"),
        ({"XDG_RUNTIME_DIR": "relative"}, False, "/st/run"),
    ],
)
def test_default_run_dir(environ: dict[str, str], root: bool, expected: str) -> None:
    assert default_run_dir(Path("/st"), environ, root=root) == Path(expected)


def test_explicit_state_dir_owns_run_dir_and_tokens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Two daemons with their own state directories never share runtime records,
    # even when XDG_RUNTIME_DIR is set.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    config = load_config(None, overrides={"driver.state_dir": str(tmp_path / "s")})
    assert config.driver.run_dir == tmp_path / "s" / "run"
    assert config.auth.tokens_file == tmp_path / "s" / "tokens.json"


def test_driver_table_is_driver_config(tmp_path: Path) -> None:
    # Every field of the driver's own settings is a [driver] key, but private_dirs
    # (the tokens file's directory, from [auth]).
    keys = {k.partition(".")[2] for k in KEYS if k.startswith("driver.")}
    assert keys == {f.name for f in attrs.fields(DriverConfig)} - {"private_dirs"}
    assert {k.partition(".")[2] for k in KEYS if k.startswith("pools.")} == {
        f.name for f in attrs.fields(PoolLimits)
    }

    config = load_config(
        None,
        overrides={
            "driver.state_dir": str(tmp_path),
            "driver.max_queued": 3,
            "driver.monitor_timeout": False,
            "driver.reconnect": "serial",
        },
    )
    driver = config.driver_config()
    assert isinstance(driver, DriverConfig)
    assert driver.state_dir == tmp_path
    assert driver.runtime_dir == tmp_path / "run"
    assert (driver.max_queued, driver.monitor_timeout, driver.reconnect) == (3, None, "serial")
    assert driver.job_wait_timeout == 30.0
    assert driver.private_dirs == (tmp_path,)
    assert driver.own_dirs == (tmp_path, tmp_path / "run", tmp_path)


def test_pool_limits_pass_the_pools_own_check() -> None:
    config = load_config(None, overrides={"pools.min_workers": 0, "pools.max_workers": 1})
    limits = config.pools
    check_limits(limits)
    assert (limits.min_workers, limits.max_workers, limits.prio_workers) == (0, 1, 5)


# -- every key: good values -------------------------------------------------------------

GOOD: list[tuple[str, str, object]] = [
    ("mode", '"legacy"', "legacy"),
    ("mode", '"default"', "default"),
    ("server.listen", '"127.0.0.1:0"', "127.0.0.1:0"),
    ("server.listen", '"[::1]:16509"', "[::1]:16509"),
    ("server.listen", '"localhost:65535"', "localhost:65535"),
    ("server.listen", '"0.0.0.0:1"', "0.0.0.0:1"),
    ("server.max_clients", "1", 1),
    ("server.max_clients", "100_000", 100000),
    ("server.max_client_requests", "1", 1),
    ("server.max_client_requests", "64", 64),
    ("server.keepalive_interval", "0", 0.0),
    ("server.keepalive_interval", "0.5", 0.5),
    ("server.keepalive_interval", "10", 10.0),
    ("server.keepalive_count", "1", 1),
    ("server.max_message_size", "1", 1),
    ("server.max_message_size", "0x10000", 65536),
    ("server.shutdown_grace", "0", 0.0),
    ("server.shutdown_grace", "2.5", 2.5),
    ("server.event_queue", "1", 1),
    ("server.max_batch", "1", 1),
    ("server.max_output_bytes", "65536", 65536),
    ("server.handshake_timeout", "0.5", 0.5),
    ("server.max_anonymous_clients", "1", 1),
    ("server.admin_max_clients", "3", 3),
    ("server.reserved_write_clients", "0", 0),
    ("server.allowed_origins", "[]", ()),
    (
        "server.allowed_origins",
        '["https://UI.example:8443", "http://localhost:3000"]',
        ("https://ui.example:8443", "http://localhost:3000"),
    ),
    ("server.metrics_access", '"token"', "token"),
    ("pools.min_workers", "0", 0),
    ("pools.min_workers", "20", 20),
    ("pools.max_workers", "5", 5),
    ("pools.max_workers", "1000", 1000),
    ("pools.prio_workers", "0", 0),
    ("pools.prio_workers", "50", 50),
    ("pools.max_pending", "1", 1),
    ("driver.max_queued", "0", 0),
    ("driver.max_queued", "100", 100),
    ("driver.max_queued_queries", "0", 0),
    ("driver.max_queued_queries", "8", 8),
    ("driver.query_lane", "false", False),
    ("driver.query_lane", "true", True),
    ("driver.job_wait_timeout", "false", None),
    ("driver.job_wait_timeout", "0.001", 0.001),
    ("driver.job_wait_timeout", "60", 60.0),
    ("driver.monitor_timeout", "false", None),
    ("driver.monitor_timeout", "1e-3", 0.001),
    ("driver.monitor_fail_fast", "false", False),
    ("driver.monitor_fail_fast", "true", True),
    ("driver.probe_interval", "0.25", 0.25),
    ("driver.destroy_grace", "0", 0.0),
    ("driver.destroy_grace", "3", 3.0),
    ("driver.shutdown_timeout", "1", 1.0),
    ("driver.start_timeout", "120", 120.0),
    ("driver.reconnect", '"serial"', "serial"),
    ("driver.reconnect", '"parallel"', "parallel"),
    ("driver.reconnect_timeout", "0.5", 0.5),
    ("driver.event_buffer", "1", 1),
    ("driver.max_events_per_second", "0", 0.0),
    ("driver.max_events_per_second", "2.5", 2.5),
    ("driver.backend", '"qemu"', "qemu"),
    ("driver.qemu_user", '"trioctl-qemu"', "trioctl-qemu"),
    ("driver.max_domains", "20000", 20000),
    ("driver.backend", '"sim"', "sim"),
    ("driver.emulators", '{qemu = "/bin/true"}', {"qemu": "/bin/true"}),
    (
        "driver.emulators",
        '{kvm-x = "/bin/true", q2 = "/bin/sh"}',
        {"kvm-x": "/bin/true", "q2": "/bin/sh"},
    ),
    ("driver.emulators", "{}", {}),
    ("driver.machines", '["none", "pc-q35-*"]', ("none", "pc-q35-*")),
    ("driver.machines", "[]", ()),
    (
        "driver.storage_dirs",
        '["/srv/images", "/srv/kernels"]',
        (Path("/srv/images"), Path("/srv/kernels")),
    ),
    ("auth.required", "false", False),
    ("auth.required", "true", True),
    ("tls.cert", '""', None),
    ("tls.key", '""', None),
    ("log.level", '"debug"', "debug"),
    ("log.level", '"info"', "info"),
    ("log.level", '"warning"', "warning"),
    ("log.level", '"error"', "error"),
    ("log.format", '"json"', "json"),
    ("log.format", '"human"', "human"),
]


@pytest.mark.parametrize(("dotted", "literal", "expected"), GOOD)
def test_good_value_in_file(write: Writer, dotted: str, literal: str, expected: object) -> None:
    config = load_config(write(document(dotted, literal)))
    got = get(config, dotted)
    assert got == expected and type(got) is type(expected)


def override_value(dotted: str, literal: str, as_text: bool) -> object:
    """A TOML literal as a Python value, or (``as_text``, for keys that are not
    strings) as the text the command line passes."""
    value = tomllib.loads(f"v = {literal}")["v"]
    if dotted not in TEXTUAL and (as_text or isinstance(value, str)):
        return literal  # a string for a non-string key is always read as a literal
    return value


@pytest.mark.parametrize("as_text", [False, True])
@pytest.mark.parametrize(("dotted", "literal", "expected"), GOOD)
def test_good_value_as_override(
    state: Path, dotted: str, literal: str, expected: object, as_text: bool
) -> None:
    overrides = {"driver.state_dir": str(state), dotted: override_value(dotted, literal, as_text)}
    got = get(load_config(None, overrides=overrides), dotted)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("dotted", ["driver.state_dir", "driver.run_dir", "auth.tokens_file"])
def test_path_keys(
    write: Writer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dotted: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path / "..")
    cases = {
        f'"{tmp_path}/a/../b"': tmp_path / "b",
        '"~/x"': tmp_path / "home" / "x",
        # Relative to the file's directory, not to the current directory.
        '"rel/x"': tmp_path / "rel" / "x",
    }
    for literal, expected in cases.items():
        assert get(load_config(write(document(dotted, literal))), dotted) == expected
    # On the command line, relative to the current directory.
    config = load_config(None, overrides={"driver.state_dir": str(tmp_path), dotted: "rel/y"})
    assert get(config, dotted) == tmp_path.parent / "rel" / "y"
    config = load_config(None, overrides={"driver.state_dir": tmp_path, dotted: tmp_path / "p"})
    assert get(config, dotted) == tmp_path / "p"


def test_tls_pair(write: Writer, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    config = load_config(write('[tls]\ncert = "cert.pem"\nkey = "key.pem"\n'))
    assert config.tls == TlsConfig(cert=tmp_path / "cert.pem", key=tmp_path / "key.pem")
    assert config.tls.enabled
    assert isinstance(config.tls.server_context(), ssl.SSLContext)
    assert load_config(write(config.to_toml())) == config


# -- every key: bad values --------------------------------------------------------------

BAD: list[tuple[str, str, str]] = [
    ("mode", '"Legacy"', 'expected one of "default", "legacy", got "Legacy"'),
    ("mode", "1", 'expected one of "default", "legacy", got 1'),
    ("server.listen", '"127.0.0.1"', 'expected "host:port"'),
    ("server.listen", '"127.0.0.1:65536"', "the port must be 0 to 65535"),
    ("server.listen", '"127.0.0.1:-1"', "the port must be 0 to 65535"),
    ("server.listen", '"127.0.0.1: 80"', "the port must be 0 to 65535"),
    ("server.listen", '"127.0.0.1:0x10"', "the port must be 0 to 65535"),
    ("server.listen", '"127.0.0.1:"', "the port must be 0 to 65535"),
    ("server.listen", '"::1:80"', "put an IPv6 address in brackets"),
    ("server.listen", '"[::1]80"', 'expected "host:port"'),
    ("server.listen", '"[nothost]:80"', "is not an IPv6 address"),
    ("server.listen", '":80"', "missing host"),
    ("server.listen", '"host name:80"', "is not a host name or address"),
    ("server.listen", "16509", "expected a string, got 16509"),
    ("server.max_clients", "0", "expected a positive integer, got 0"),
    ("server.max_clients", "true", "expected a positive integer, got true"),
    ("server.max_clients", "1.0", "expected a positive integer, got 1.0"),
    ("server.max_clients", '"5"', 'expected a positive integer, got "5"'),
    ("server.max_client_requests", "0", "expected a positive integer, got 0"),
    ("server.keepalive_interval", "-1", "expected a non-negative number, got -1"),
    ("server.keepalive_interval", "true", "expected a non-negative number, got true"),
    ("server.keepalive_interval", "inf", "expected a non-negative number, got inf"),
    ("server.keepalive_interval", "nan", "expected a non-negative number, got nan"),
    ("server.keepalive_count", "0", "expected a positive integer, got 0"),
    ("server.max_message_size", "0", "expected a positive integer, got 0"),
    ("server.shutdown_grace", "-0.1", "expected a non-negative number, got -0.1"),
    ("server.event_queue", "0", "expected a positive integer, got 0"),
    ("server.max_batch", "0", "expected a positive integer, got 0"),
    ("server.max_output_bytes", "0", "expected a positive integer, got 0"),
    ("server.handshake_timeout", "0", "expected a positive number, got 0"),
    ("server.max_anonymous_clients", "0", "expected a positive integer, got 0"),
    ("server.admin_max_clients", "-1", "expected a positive integer, got -1"),
    ("server.reserved_write_clients", "-1", "expected a non-negative integer, got -1"),
    ("server.allowed_origins", '"https://a.example"', "expected an array of origins"),
    ("server.allowed_origins", '["https://a.example/path"]', "expected origins such as"),
    ("server.allowed_origins", '["*"]', 'expected origins such as "https://ui.example:8443"'),
    ("server.metrics_access", '"open"', 'expected one of "loopback", "token", got "open"'),
    ("pools.min_workers", "-1", "expected a non-negative integer, got -1"),
    ("pools.min_workers", "21", "min_workers (21) cannot be larger than max_workers (20)"),
    ("pools.max_workers", "0", "expected a positive integer, got 0"),
    ("pools.max_workers", "4", "min_workers (5) cannot be larger than max_workers (4)"),
    ("pools.prio_workers", "-1", "expected a non-negative integer, got -1"),
    ("pools.prio_workers", "false", "expected a non-negative integer, got false"),
    ("pools.max_pending", "0", "expected a positive integer, got 0"),
    ("driver.state_dir", '""', "expected a path, got an empty string"),
    ("driver.state_dir", "1", "expected a path string, got 1"),
    ("driver.state_dir", '["a"]', "expected a path string, got an array"),
    ("driver.state_dir", '"~nosuchuser-trioctl/x"', "cannot expand"),
    ("driver.run_dir", '""', "expected a path, got an empty string"),
    ("driver.max_queued", "-1", "expected a non-negative integer, got -1"),
    ("driver.max_queued", "1.5", "expected a non-negative integer, got 1.5"),
    ("driver.max_queued", "1979-05-27", "got date 1979-05-27"),
    ("driver.max_queued", "{ a = 1 }", "got a table"),
    ("driver.max_queued_queries", "-1", "expected a non-negative integer, got -1"),
    ("driver.max_queued_queries", "true", "expected a non-negative integer, got true"),
    ("driver.query_lane", "1", "expected true or false, got 1"),
    ("driver.query_lane", '"no"', 'expected true or false, got "no"'),
    ("driver.job_wait_timeout", "0", "expected a positive number or false, got 0"),
    ("driver.job_wait_timeout", "true", "expected a positive number or false, got true"),
    ("driver.job_wait_timeout", "-1", "expected a positive number or false, got -1"),
    ("driver.job_wait_timeout", '"forever"', "expected a positive number or false"),
    ("driver.job_wait_timeout", "inf", "expected a positive number or false, got inf"),
    ("driver.monitor_timeout", '"fast"', 'expected a positive number or false, got "fast"'),
    ("driver.monitor_timeout", "0.0", "expected a positive number or false, got 0.0"),
    ("driver.monitor_fail_fast", "1", "expected true or false, got 1"),
    ("driver.monitor_fail_fast", '"yes"', 'expected true or false, got "yes"'),
    ("driver.probe_interval", "0", "expected a positive number, got 0"),
    ("driver.destroy_grace", "-1", "expected a non-negative number, got -1"),
    ("driver.shutdown_timeout", "0", "expected a positive number, got 0"),
    ("driver.start_timeout", "-5", "expected a positive number, got -5"),
    ("driver.reconnect", '"Serial"', 'expected one of "parallel", "serial", got "Serial"'),
    ("driver.reconnect_timeout", "0", "expected a positive number, got 0"),
    ("driver.event_buffer", "0", "expected a positive integer, got 0"),
    ("driver.max_events_per_second", "-1", "expected a non-negative number, got -1"),
    ("driver.backend", '"kvm"', 'expected one of "sim", "qemu", got "kvm"'),
    ("driver.qemu_user", '"a b"', 'expected a user name, got "a b"'),
    ("driver.max_domains", "0", "expected a positive integer, got 0"),
    ("driver.backend", '"/usr/bin/qemu"', 'expected one of "sim", "qemu"'),
    ("driver.emulators", '"qemu"', "expected a table of name = path"),
    ("driver.emulators", '{sim = "/bin/true"}', '"sim" is the built-in simulator'),
    ("driver.emulators", '{Qemu = "/bin/true"}', 'emulator name "Qemu": expected'),
    ("driver.emulators", '{qemu = "bin/true"}', "emulator qemu: expected an absolute path"),
    ("driver.emulators", '{qemu = "/nonexistent/qemu"}', "is not an executable file"),
    ("driver.emulators", '{qemu = "/etc"}', "is not an executable file"),
    ("driver.machines", '"pc"', "expected an array of machine type names"),
    ("driver.machines", '["none,kernel=/etc/shadow"]', "no ',' or '='"),
    ("driver.storage_dirs", '"/srv"', "expected an array of directory paths"),
    ("driver.storage_dirs", '["/"]', "would allow every file"),
    ("driver.storage_dirs", "[1]", "expected a path string, got 1"),
    ("auth.tokens_file", '""', "expected a path, got an empty string"),
    ("auth.tokens_file", "false", "expected a path string, got false"),
    ("auth.required", '"no"', 'expected true or false, got "no"'),
    ("auth.required", "0", "expected true or false, got 0"),
    ("tls.cert", "1", "expected a path string, got 1"),
    ("tls.cert", '"cert.pem"', "tls.key is missing: give both cert and key, or neither"),
    ("tls.key", "true", "expected a path string, got true"),
    ("tls.key", '"key.pem"', "tls.cert is missing: give both cert and key, or neither"),
    ("log.level", '"INFO"', 'expected one of "debug", "info", "warning", "error", got "INFO"'),
    ("log.level", '"critical"', "expected one of"),
    ("log.format", '"text"', 'expected one of "human", "json", got "text"'),
]


@pytest.mark.parametrize(("dotted", "literal", "reason"), BAD)
def test_bad_value_in_file(write: Writer, dotted: str, literal: str, reason: str) -> None:
    path = write(document(dotted, literal))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert (error.file, error.key) == (str(path), dotted)
    assert reason in error.reason
    assert str(error) == f"{path}: {dotted}: {error.reason}"


@pytest.mark.parametrize("as_text", [False, True])
@pytest.mark.parametrize(("dotted", "literal", "reason"), BAD)
def test_bad_value_as_override(
    state: Path, dotted: str, literal: str, reason: str, as_text: bool
) -> None:
    value = override_value(dotted, literal, as_text)
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"driver.state_dir": str(state), dotted: value})
    assert (info.value.file, info.value.key) == (COMMAND_LINE, dotted)
    assert reason in info.value.reason


def test_every_key_has_good_and_bad_cases() -> None:
    good = {dotted for dotted, _, _ in GOOD} | {"driver.state_dir", "driver.run_dir"}
    good |= {"auth.tokens_file"}  # test_path_keys
    assert good == set(KEYS)
    assert {dotted for dotted, _, _ in BAD} == set(KEYS)


def test_error_message_reads_file_key_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.toml").write_text(
        f'[driver]\nstate_dir = "{tmp_path}"\nmonitor_timeout = "fast"\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        load_config(Path("config.toml"))
    assert str(info.value) == (
        'config.toml: driver.monitor_timeout: expected a positive number or false, got "fast"'
    )
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"driver.monitor_timeout": "fast"})
    assert str(info.value) == (
        'command line: driver.monitor_timeout: expected a positive number or false, got "fast"'
    )


def test_config_error_is_a_startup_error() -> None:
    error = ConfigError("c.toml", "pools.max_workers", "expected a positive integer, got 0")
    assert not isinstance(error, TrioctlError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.file, copy.key, copy.reason) == (error.file, error.key, error.reason)
    assert str(ConfigError("c.toml", None, "cannot read: gone")) == "c.toml: cannot read: gone"


# -- structure: unknown tables and keys, wrong shapes -----------------------------------


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("[serve]\nlisten = 1\n", "serve", "unknown table; did you mean [server]?"),
        ("[zzz]\n", "zzz", "unknown table (known: [server], [pools]"),
        ("[pools]\nmax_worker = 3\n", "pools.max_worker", "unknown key; did you mean max_workers?"),
        ("[pools]\nzzz = 3\n", "pools.zzz", "unknown key (known: min_workers, max_workers"),
        ("[server.listen]\nhost = 1\n", "server.listen", "expected a string, got a table"),
        ("[server.tls]\ncert = 1\n", "server.tls", "unknown table"),
        ("moed = 1\n", "moed", "unknown key; did you mean mode?"),
        ("server = 5\n", "server", "expected a table [server], got 5"),
        ("pools = []\n", "pools", "expected a table [pools], got an array"),
        ("[[log]]\nlevel = 1\n", "log", "expected a table [log], got an array"),
        # A field of the runtime class that is not a key of the file.
        ("[driver]\nprivate_dirs = []\n", "driver.private_dirs", "unknown key"),
    ],
)
def test_unknown_and_misshapen(write: Writer, text: str, key: str, reason: str) -> None:
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.key) == (str(path), key)
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("overrides", "key", "reason"),
    [
        ({"pools.max_worker": 3}, "pools.max_worker", "did you mean pools.max_workers?"),
        ({"server": {"listen": "x"}}, "server", "a table, not a key: give server.KEY"),
        ({"nothing.at.all": 1}, "nothing.at.all", "unknown key"),
        ({3: 1}, "3", "expected a dotted key"),
    ],
)
def test_unknown_override(overrides: dict[Any, Any], key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides=overrides)
    assert (info.value.file, info.value.key) == (COMMAND_LINE, key)
    assert reason in info.value.reason


# -- the file itself --------------------------------------------------------------------


def test_invalid_toml_names_file_and_position(write: Writer) -> None:
    path = write('[server]\nlisten = "127.0.0.1:1"\nmax_clients = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path)
    assert info.value.key is None
    assert "invalid TOML" in info.value.reason
    assert "(at line 3, column 15)" in info.value.reason
    assert str(info.value).startswith(f"{path}: invalid TOML")


def test_duplicate_key_is_invalid_toml(write: Writer) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write("[pools]\nmin_workers = 1\nmin_workers = 2\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert info.value.file == str(tmp_path / "nope.toml")
    assert info.value.key is None
    assert info.value.reason == "cannot read: No such file or directory"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read: Is a directory"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[log]\nlevel = "\xff"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == str(path) and info.value.key is None
    assert "UTF-8" in info.value.reason or "invalid TOML" in info.value.reason


def test_empty_file_gives_defaults(write: Writer) -> None:
    assert load_config(write("")) == load_config(None)


# -- checks across keys and against the file system -------------------------------------


def test_min_max_workers_blames_the_command_line_first(write: Writer) -> None:
    path = write("[pools]\nmin_workers = 10\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides={"pools.max_workers": "8"})
    assert (info.value.file, info.value.key) == (COMMAND_LINE, "pools.max_workers")
    assert info.value.reason == "min_workers (10) cannot be larger than max_workers (8)"
    # Both in the file: min_workers is named (libvirt's message names it too).
    with pytest.raises(ConfigError) as info:
        load_config(write("[pools]\nmin_workers = 10\nmax_workers = 8\n"))
    assert info.value.key == "pools.min_workers"


def test_state_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"driver.state_dir": str(tmp_path / "f")})
    assert info.value.key == "driver.state_dir"
    assert "exists and is not a directory" in info.value.reason


def test_run_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    # run_dir was not given: its default (STATE_DIR/run) is blamed as run_dir.
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"driver.state_dir": str(tmp_path)})
    assert (info.value.file, info.value.key) == ("defaults", "driver.run_dir")


def test_tokens_file_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "tokens.json").mkdir()
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides={"driver.state_dir": str(tmp_path)})
    assert info.value.key == "auth.tokens_file"
    assert "is a directory" in info.value.reason


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    ca = trustme.CA()
    one, two = ca.issue_cert("localhost"), ca.issue_cert("example.org")
    files = {
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "other_key": tmp_path / "other-key.pem",
        "garbage": tmp_path / "garbage.pem",
        "encrypted": tmp_path / "encrypted.pem",
    }
    one.cert_chain_pems[0].write_to_path(str(files["cert"]))
    one.private_key_pem.write_to_path(str(files["key"]))
    two.private_key_pem.write_to_path(str(files["other_key"]))
    files["garbage"].write_text("not a PEM file\n")
    key = serialization.load_pem_private_key(files["key"].read_bytes(), password=None)
    files["encrypted"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return files


@pytest.mark.parametrize(
    ("cert", "key", "blamed", "reason"),
    [
        ("cert", "missing", "tls.key", "cannot read"),
        ("missing", "key", "tls.cert", "cannot read"),
        ("cert", "dir", "tls.key", "cannot read"),
        ("cert", "other_key", "tls.cert", "cannot load the certificate and key"),
        ("garbage", "key", "tls.cert", "cannot load the certificate and key"),
        ("cert", "garbage", "tls.cert", "cannot load the certificate and key"),
        ("cert", "encrypted", "tls.key", "the key is encrypted"),
    ],
)
def test_tls_files_must_form_a_usable_pair(
    tls_files: dict[str, Path], tmp_path: Path, cert: str, key: str, blamed: str, reason: str
) -> None:
    (tmp_path / "dir").mkdir()
    names = {**tls_files, "missing": tmp_path / "missing.pem", "dir": tmp_path / "dir"}
    with pytest.raises(ConfigError) as info:
        load_config(
            None,
            overrides={
                "driver.state_dir": str(tmp_path),
                "tls.cert": str(names[cert]),
                "tls.key": str(names[key]),
            },
        )
    assert (info.value.file, info.value.key) == (COMMAND_LINE, blamed)
    assert reason in info.value.reason


# -- legacy mode ------------------------------------------------------------------------


def test_legacy_mode_changes_five_defaults(write: Writer) -> None:
    config = load_config(write('mode = "legacy"\n'))
    assert config.mode == "legacy" and config.legacy
    assert LEGACY_DEFAULTS == {
        "pools.prio_workers": 0,
        "driver.max_queued": 0,
        "driver.query_lane": False,
        "driver.monitor_timeout": None,
        "driver.reconnect": "serial",
    }
    for dotted, value in DEFAULTS.items():
        expected = LEGACY_DEFAULTS.get(dotted, value)
        if dotted == "mode":
            expected = "legacy"
        assert get(config, dotted) == expected, dotted
    driver = config.driver_config()
    assert (driver.max_queued, driver.monitor_timeout, driver.reconnect) == (0, None, "serial")
    assert driver.query_lane is False
    assert config.pools.prio_workers == 0


def test_explicit_keys_win_over_legacy_defaults(write: Writer) -> None:
    path = write(
        'mode = "legacy"\n[pools]\nprio_workers = 2\n'
        '[driver]\nmonitor_timeout = 7\nreconnect = "parallel"\n'
    )
    config = load_config(path, overrides={"driver.max_queued": "4"})
    assert config.legacy
    assert config.pools.prio_workers == 2
    assert config.driver.monitor_timeout == 7.0
    assert config.driver.reconnect == "parallel"
    assert config.driver.max_queued == 4


def test_legacy_mode_from_the_command_line(write: Writer) -> None:
    path = write("[driver]\nmax_queued = 3\n")
    config = load_config(path, overrides={"mode": "legacy"})
    assert config.legacy
    assert config.driver.max_queued == 3  # explicit in the file
    assert config.driver.monitor_timeout is None  # legacy default
    # And back: the command line's "default" beats the file's "legacy".
    path = write('mode = "legacy"\n')
    config = load_config(path, overrides={"mode": "default"})
    assert not config.legacy and config.driver.monitor_timeout == 5.0


# -- overrides --------------------------------------------------------------------------


def test_overrides_apply_on_top_of_the_file(write: Writer, tmp_path: Path) -> None:
    path = write('[server]\nlisten = "127.0.0.1:9"\nmax_clients = 7\n[driver]\nbackend = "sim"\n')
    config = load_config(
        path,
        overrides={
            "server.listen": "127.0.0.1:0",
            "driver.state_dir": str(tmp_path / "x"),
            "driver.backend": "qemu",
            "driver.job_wait_timeout": "false",
            "driver.probe_interval": 0.5,
            "log.level": "debug",
        },
    )
    assert config.server.listen == "127.0.0.1:0"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 0)
    assert config.server.max_clients == 7  # from the file
    assert config.driver.state_dir == tmp_path / "x"
    assert config.driver.backend == "qemu"
    assert config.driver.job_wait_timeout is None
    assert config.driver.probe_interval == 0.5
    assert config.log.level_number == 10


def test_override_strings_are_literals_only_for_non_string_keys(state: Path) -> None:
    config = load_config(
        None,
        overrides={
            "driver.state_dir": str(state),
            "pools.max_workers": "30",
            "driver.monitor_fail_fast": "false",
            "driver.monitor_timeout": "2.5",
            "server.listen": "localhost:1",
        },
    )
    assert config.pools.max_workers == 30
    assert config.driver.monitor_fail_fast is False
    assert config.driver.monitor_timeout == 2.5
    # A string key never goes through TOML: "false" is a bad log level, not false.
    with pytest.raises(ConfigError, match='got "false"'):
        load_config(None, overrides={"driver.state_dir": str(state), "log.level": "false"})
    # Text that is not one TOML value stays text, and is refused as such.
    with pytest.raises(ConfigError, match='got "1\\\\nx = 2"'):
        load_config(
            None, overrides={"driver.state_dir": str(state), "pools.max_workers": "1\nx = 2"}
        )


def test_python_none_means_forever_in_overrides(state: Path) -> None:
    config = load_config(
        None, overrides={"driver.state_dir": state, "driver.monitor_timeout": None}
    )
    assert config.driver.monitor_timeout is None


# -- to_toml ----------------------------------------------------------------------------


def test_to_toml_writes_every_key_with_comments(state: Path) -> None:
    config = load_config(None, overrides={"driver.state_dir": str(state)})
    text = config.to_toml()
    data = tomllib.loads(text)
    written = {"mode"} | {
        f"{table}.{key}" for table, keys in data.items() if table != "mode" for key in keys
    }
    assert written == set(KEYS)
    assert data["driver"]["state_dir"] == str(state)
    assert data["tls"] == {"cert": "", "key": ""}
    # Each key is preceded by its comment.
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[index - 1].startswith("# "), line


def test_dump_toml_of_dotted_keys_loads_back(write: Writer, state: Path) -> None:
    # The one writer, as the benchmarks use it: no comments, only some keys.
    settings = {
        "mode": "legacy",
        "driver.state_dir": str(state),
        "driver.reconnect_timeout": 1e6,
        "driver.storage_dirs": [str(state.parent / 'img "1"\n')],
        "pools.prio_workers": 5,
        "server.allowed_origins": ["https://a.example"],
    }
    config = load_config(write(dump_toml(settings)))
    assert config == load_config(None, overrides=settings)
    assert config.driver.storage_dirs == (state.parent / 'img "1"\n',)


def test_round_trip_of_defaults_and_legacy(write: Writer, state: Path) -> None:
    for mode in ("default", "legacy"):
        config = load_config(None, overrides={"driver.state_dir": str(state), "mode": mode})
        assert load_config(write(config.to_toml())) == config
        # Written in full, a legacy file no longer depends on the legacy defaults.
        assert load_config(write(config.to_toml()), overrides={"mode": "default"}).pools == (
            config.pools
        )


positive = st.floats(min_value=0, exclude_min=True, allow_infinity=False, allow_nan=False)
non_negative = st.floats(min_value=0, allow_infinity=False, allow_nan=False)
path_part = st.text(st.characters(codec="utf-8", exclude_characters="\0/"), min_size=1).filter(
    lambda s: s not in (".", "..") and not s.startswith("~")
)


@given(
    max_queued=st.integers(0, 2**63),
    min_workers=st.integers(0, 50),
    extra_workers=st.integers(0, 50),
    monitor_timeout=st.none() | positive,
    job_wait_timeout=st.none() | positive | st.integers(1, 10**6),
    keepalive_interval=non_negative,
    destroy_grace=non_negative,
    probe_interval=positive,
    port=st.integers(0, 65535),
    name=path_part,
    mode=st.sampled_from(["default", "legacy"]),
)
def test_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    max_queued: int,
    min_workers: int,
    extra_workers: int,
    monitor_timeout: float | None,
    job_wait_timeout: float | None,
    keepalive_interval: float,
    destroy_grace: float,
    probe_interval: float,
    port: int,
    name: str,
    mode: str,
) -> None:
    base = tmp_path_factory.getbasetemp() / "round-trip"
    config = load_config(
        None,
        overrides={
            "mode": mode,
            "driver.state_dir": base / "missing" / name,
            "driver.max_queued": max_queued,
            "pools.min_workers": min_workers,
            "pools.max_workers": min_workers + extra_workers + 1,
            "driver.monitor_timeout": monitor_timeout,
            "driver.job_wait_timeout": job_wait_timeout,
            "server.keepalive_interval": keepalive_interval,
            "driver.destroy_grace": destroy_grace,
            "driver.probe_interval": probe_interval,
            "server.listen": f"[::1]:{port}",
        },
    )
    assert config.driver.state_dir.name == name
    assert config.server.port == port
    base.mkdir(exist_ok=True)
    path = base / "config.toml"
    path.write_text(config.to_toml(), encoding="utf-8")
    assert load_config(path) == config


# -- never anything but ConfigError -----------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["127.0.0.1:0", "false", "1", "-1", "0.5", "inf", "legacy", "~", ""])
)
values = (
    scalars
    | st.lists(scalars, max_size=2)
    | st.dictionaries(st.text(max_size=3), scalars, max_size=2)
)
keys = st.sampled_from([*KEYS, "server", "nope", "pools.nope", "a.b.c", ""])


@given(st.dictionaries(keys, values | st.builds(Path, st.text(max_size=10)), max_size=6))
def test_overrides_raise_only_config_error(overrides: dict[str, Any]) -> None:
    try:
        config = load_config(None, overrides=overrides)
    except ConfigError as exc:
        error = exc
    else:
        assert isinstance(config, DaemonConfig)
        return
    assert error.file in (COMMAND_LINE, "defaults")
    assert error.reason


literals = st.sampled_from(
    [
        "1",
        "0",
        "-3",
        "1.5",
        "true",
        "false",
        '"x"',
        '"127.0.0.1:0"',
        '""',
        "[]",
        "{}",
        "nan",
        "-inf",
        "1979-05-27T07:32:00Z",
        '"legacy"',
        '"serial"',
        "99999999999999999999",
        "{ a = 1 }",
        '"debug"',
        "1e400",
    ]
)


@given(
    st.lists(
        st.tuples(st.sampled_from(["", *KEYS, "server.x", "nope.x", "server.listen.x"]), literals),
        max_size=8,
    )
)
def test_files_raise_only_config_error(
    tmp_path_factory: pytest.TempPathFactory, entries: list[tuple[str, str]]
) -> None:
    base = tmp_path_factory.getbasetemp() / "fuzz-files"
    base.mkdir(exist_ok=True)
    top: dict[str, str] = {}
    tables: dict[str, dict[str, str]] = {"driver": {"state_dir": f'"{base}/state"'}}
    for dotted, literal in entries:
        table, _, key = dotted.rpartition(".")
        if not table:
            top.setdefault(key or "mode", literal)
        else:
            tables.setdefault(table, {}).setdefault(key, literal)
    text = "".join(f"{k} = {v}\n" for k, v in top.items())
    for table, items in tables.items():
        text += f"[{table}]\n" + "".join(f"{k} = {v}\n" for k, v in items.items())
    path = base / "config.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as exc:
        error = exc
    else:
        return
    assert error.file == str(path)


@given(st.binary(max_size=200) | st.text(string.printable, max_size=200).map(str.encode))
def test_garbage_files_raise_only_config_error(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    base = tmp_path_factory.getbasetemp() / "fuzz-bytes"
    base.mkdir(exist_ok=True)
    path = base / "config.toml"
    path.write_bytes(data)
    try:
        load_config(path)
    except ConfigError as exc:
        error = exc
    else:
        return
    assert error.file == str(path)


# -- parse_listen -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:16509", ("127.0.0.1", 16509)),
        ("[::1]:16509", ("::1", 16509)),
        ("[::]:0", ("::", 0)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("host-1.example.org.:80", ("host-1.example.org.", 80)),
        ("0.0.0.0:00080", ("0.0.0.0", 80)),
    ],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ":",
        "x",
        "x:",
        ":1",
        "[::1]",
        "[::1]:",
        "[::1:80",
        "::1",
        "-x:1",
        "x-:1",
        "a..b:1",
        "x:123456",
        "x:+1",
        "x:1.0",
        "x:٣",
        "1.2.3.999:1",
        "1.2.3:1",
        "é:1",
        "x y:1",
        f"{'a' * 64}:1",
        "[1.2.3.4]:1",
    ],
)
def test_parse_listen_refuses(text: str) -> None:
    # The message quotes the input.
    with pytest.raises(ValueError, match=re.escape(json.dumps(text, ensure_ascii=False))):
        parse_listen(text)


@given(st.ip_addresses(), st.integers(0, 65535))
def test_parse_listen_any_address(address: Any, port: int) -> None:
    text = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
    assert parse_listen(text) == (str(address), port)


@given(st.text(max_size=30))
def test_parse_listen_raises_only_value_error(text: str) -> None:
    try:
        host, port = parse_listen(text)
    except ValueError:
        return
    assert 0 <= port <= 65535 and host


# -- the sections on their own ----------------------------------------------------------


def test_sections_are_frozen_and_default_constructible() -> None:
    for cls in (ServerConfig, PoolLimits, TlsConfig, LogConfig):
        section = cls()
        name = attrs.fields(cls)[0].name
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            setattr(section, name, 1)
    auth = AuthConfig(tokens_file=Path("/t.json"))
    assert auth.required is True
    assert LogConfig(level="warning").level_number == 30
    assert ServerConfig(listen="[::1]:5").host == "::1"


def test_seconds_are_floats_and_finite(state: Path) -> None:
    config = load_config(None, overrides={"driver.state_dir": state, "driver.start_timeout": 3})
    assert type(config.driver.start_timeout) is float
    with pytest.raises(ConfigError, match="got 10000"):
        load_config(None, overrides={"driver.start_timeout": 10**400})
    with pytest.raises(ConfigError, match="got nan"):
        load_config(None, overrides={"driver.start_timeout": math.nan})


def test_paths_with_nul_or_surrogates_are_refused(state: Path) -> None:
    with pytest.raises(ConfigError, match="NUL"):
        load_config(None, overrides={"driver.state_dir": "/a\0b"})
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(None, overrides={"driver.state_dir": os.fsdecode(b"/a\xff")})


# -- the docs ---------------------------------------------------------------------------


def test_docs_list_every_key() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for dotted in KEYS:
        assert f"`{dotted}`" in text, dotted
