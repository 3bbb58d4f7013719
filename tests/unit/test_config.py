"""Configuration: schema, every problem at once with its key path, generated docs and example."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kei_gateway.cli import main as cli, exitcodes
from kei_gateway.config import (
    ConfigError, HostPort, check_files, config_from_string, configuration_markdown, example_toml,
    format_duration, parse_duration, read_config,
)
from kei_gateway.sim.harness import demo_config_text
from kei_gateway.sim.pki import write_demo_credentials

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = '[gateway]\nlg_code = "131041"\n'


def problems_of(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as caught:
        config_from_string(text)
    return {p.path: p.message for p in caught.value.problems}


def test_when_only_gateway_is_given_then_defaults_of_spec_apply() -> None:
    config = config_from_string(MINIMAL)
    assert config.gateway.spool_dir == "/var/spool/kei-gateway"
    assert config.gateway.purge_at == (0, 30)
    assert config.retention.payloads == 86400 and config.retention.ledger == 1826 * 86400
    assert config.database_url == "sqlite:////var/lib/kei-gateway/ledger.sqlite3"
    assert config.listeners.metrics.address == HostPort("127.0.0.1", 9464)
    assert config.listeners.push is None and not config.peers and not config.flows
    assert config.tls.min_version == "1.2" and config.keys.store == "store.key"


def test_when_the_shipped_example_is_parsed_then_it_is_valid_and_has_every_flow() -> None:
    config = read_config(str(ROOT / "etc" / "kei-gateway.toml.example"))
    assert set(config.flows) == {"jnks-payments", "jnks-receipts", "mpn-slips", "mpn-results", "airis-reconcile"}
    assert set(config.peers) == {"jnks", "mpn"}
    assert config.peers["jnks"].retry.attempts == 8 and config.peers["jnks"].retry.max_delay == 3600


def test_when_the_schema_changes_then_the_committed_example_and_docs_must_be_regenerated() -> None:
    assert (ROOT / "etc" / "kei-gateway.toml.example").read_text(encoding="utf-8") == example_toml(), \
        "regenerate: python -m kei_gateway.config example > etc/kei-gateway.toml.example"
    assert (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8") == configuration_markdown(), \
        "regenerate: python -m kei_gateway.config docs > docs/configuration.md"


def test_when_many_things_are_wrong_then_every_problem_is_reported_with_its_key_path() -> None:
    found = problems_of("""
[gateway]
lg_code = "131040"
spool_dir = "relative/spool"
colour = "blue"
[retention]
payloads = "3 days"
[database]
url = "mysql://x"
[peers.jnks]
url = "http://jnks.example/upload/"
ca = "/ca.pem"
allow = ["10.20.30.1/24", "nonsense"]
retry = { attempts = 0, first_delay = "1x" }
connect_timeout = 10
[flows.jnks-payments]
peer = "nobody"
outbox = "outbox/jnks"
ready = "poll"
[flows.unknown-flow]
peer = "jnks"
[listeners.metrics]
address = "localhost"
[listeners.push]
address = "[1::2::3]:8443"
[extra]
""")
    assert "check digit should be 1, got 0" in found["gateway.lg_code"]
    assert "absolute" in found["gateway.spool_dir"]
    assert "unknown key" in found["gateway.colour"]
    assert "not a duration" in found["retention.payloads"]
    assert "unsupported database URL" in found["database.url"]
    assert "https" in found["peers.jnks.url"]
    assert "'10.20.30.1/24'" in found["peers.jnks.allow"] and "'nonsense'" in found["peers.jnks.allow"]
    assert "out of range" in found["peers.jnks.retry.attempts"]
    assert "not a duration" in found["peers.jnks.retry.first_delay"]
    assert "expected a duration string" in found["peers.jnks.connect_timeout"]
    assert "no peer 'nobody'" in found["flows.jnks-payments.peer"]
    assert '"rename"' in found["flows.jnks-payments.ready"]
    assert "unknown flow" in found["flows.unknown-flow"]
    assert "host:port" in found["listeners.metrics.address"]
    assert "not an IPv6 address" in found["listeners.push.address"]
    assert "unknown section" in found["extra"]


def test_when_gateway_section_is_missing_then_that_is_the_problem() -> None:
    assert "lg_code" in problems_of("[retention]\n")["gateway"]


def test_when_toml_syntax_is_broken_then_the_line_is_named() -> None:
    message = problems_of("[gateway\nlg_code=1")["(file)"]
    assert "line 1" in message


def test_when_an_inbound_flow_peer_has_no_results_url_then_it_is_named() -> None:
    found = problems_of(MINIMAL + """
[peers.jnks]
url = "https://jnks.example.lg.jp/upload/"
ca = "/ca.pem"
allow = ["10.20.30.0/24"]
[flows.jnks-receipts]
peer = "jnks"
inbox = "inbox/jnks-receipts"
""")
    assert "results_url" in found["peers.jnks.results_url"]


def test_when_push_and_metrics_share_an_address_then_it_is_refused() -> None:
    found = problems_of(MINIMAL + '[listeners.metrics]\naddress = "127.0.0.1:9000"\n[listeners.push]\naddress = "127.0.0.1:9000"\n')
    assert "own port" in found["listeners.push.address"]


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604800),
                                               ("1h30m", 5400), ("250ms", 0.25)])
def test_when_a_duration_is_written_then_it_becomes_seconds_and_back(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["", "5", "m", "5 m", "-5s", "5w", "1h 30m", "5s5"])
def test_when_a_duration_is_malformed_then_it_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "size"), [("2GiB", 2 << 30), ("512MiB", 512 << 20), ("16KiB", 16 << 10),
                                            ("100B", 100), ("1TiB", 1 << 40)])
def test_when_a_size_is_written_then_it_becomes_bytes_and_back(text: str, size: int) -> None:
    from kei_gateway.config._kinds import format_size, parse_size

    assert parse_size(text) == size and parse_size(format_size(size)) == size


@pytest.mark.parametrize("text", ["", "2", "2GB", "2 G", "-1MiB", "1.5GiB", "9" * 16 + "B"])
def test_when_a_size_is_malformed_then_it_is_refused_naming_the_units(text: str) -> None:
    from kei_gateway.config._kinds import parse_size

    with pytest.raises(ValueError, match="KiB, MiB, GiB"):
        parse_size(text)


def test_when_max_file_size_is_not_given_then_it_is_2GiB_and_out_of_bounds_values_are_refused() -> None:
    assert config_from_string(MINIMAL).gateway.max_file_size == 2 << 30
    assert config_from_string(MINIMAL + 'max_file_size = "512MiB"\n').gateway.max_file_size == 512 << 20
    assert "at most 64GiB" in problems_of(MINIMAL + 'max_file_size = "65GiB"\n')["gateway.max_file_size"]
    assert "at least 1KiB" in problems_of(MINIMAL + 'max_file_size = "100B"\n')["gateway.max_file_size"]
    assert "size string" in problems_of(MINIMAL + "max_file_size = 2147483648\n")["gateway.max_file_size"]


@pytest.mark.parametrize("code", ["131041", "131202", "011002", "131130"])
def test_when_lg_code_is_one_of_the_spec_examples_then_it_is_accepted(code: str) -> None:
    assert config_from_string(f'[gateway]\nlg_code = "{code}"\n').gateway.lg_code == code


def test_when_lg_code_is_not_quoted_then_the_message_says_to_quote_it() -> None:
    assert "quoted" in problems_of("[gateway]\nlg_code = 131041\n")["gateway.lg_code"]


def test_when_ipv6_addresses_are_given_then_they_parse() -> None:
    config = config_from_string(MINIMAL + '[listeners.metrics]\naddress = "[::1]:9464"\nallow = ["::1/128"]\n')
    assert config.listeners.metrics.address == HostPort("::1", 9464)
    assert str(config.listeners.metrics.address) == "[::1]:9464"


def write_config(tmp_path: Path, extra: str = "") -> Path:
    write_demo_credentials(str(tmp_path / "credentials"))
    path = tmp_path / "kei-gateway.toml"
    path.write_text(demo_config_text(str(tmp_path), 9464, extra=extra), encoding="utf-8")
    return path


def test_when_files_exist_with_safe_modes_then_check_files_finds_nothing(tmp_path: Path) -> None:
    config = read_config(str(write_config(tmp_path)))
    assert check_files(config, {}) == []


def test_when_a_secret_is_readable_by_others_or_missing_then_both_are_named(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    os.chmod(tmp_path / "credentials" / "store.key", 0o644)
    os.unlink(tmp_path / "credentials" / "audit.key")
    problems = {p.path: p.message for p in check_files(read_config(str(path)), {})}
    assert "0644" in problems["keys.store"] and "chmod 600" in problems["keys.store"]
    assert "No such file" in problems["keys.audit"]
    assert set(problems) == {"keys.store", "keys.audit"}


def test_when_a_bare_name_is_given_then_it_is_read_from_the_credentials_directory(tmp_path: Path) -> None:
    write_demo_credentials(str(tmp_path / "creds"))
    config = config_from_string(MINIMAL)
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}
    assert config.file_path("gateway.key", environ) == str(tmp_path / "creds" / "gateway.key")
    assert check_files(config, environ) == []
    missing = check_files(config, {"CREDENTIALS_DIRECTORY": str(tmp_path / "empty")})
    assert {p.path for p in missing} == {"tls.certificate", "tls.private_key", "keys.store", "keys.audit"}
    assert "$CREDENTIALS_DIRECTORY" in missing[0].message


def test_when_a_secret_is_a_systemd_credential_then_its_mode_is_systemds_business(tmp_path: Path) -> None:
    write_demo_credentials(str(tmp_path / "creds"))
    os.chmod(tmp_path / "creds" / "store.key", 0o440)  # what systemd's tmpfs fallback shows (ACL for the user)
    config = config_from_string(MINIMAL)
    assert check_files(config, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")}) == []
    by_path = config_from_string(MINIMAL.replace('"131041"\n', f'"131041"\n[keys]\nstore = "{tmp_path}/creds/store.key"\n'))
    assert [p.path for p in check_files(by_path, {"CREDENTIALS_DIRECTORY": str(tmp_path / "creds")})] == [], \
        "a path into the credentials directory is the same file systemd manages"
    outside = {p.path: p.message for p in check_files(by_path, {})}
    assert "0440" in outside["keys.store"], "outside systemd the same mode is refused"


def test_when_choosing_the_config_file_then_flag_beats_environment_beats_default() -> None:
    parser = cli.build_parser()
    assert cli.config_path_from(parser.parse_args(["-c", "/x.toml", "check-config"]), {"KEI_GATEWAY_CONFIG": "/y.toml"}) == "/x.toml"
    assert cli.config_path_from(parser.parse_args(["check-config"]), {"KEI_GATEWAY_CONFIG": "/y.toml"}) == "/y.toml"
    assert cli.config_path_from(parser.parse_args(["check-config"]), {}) == "/etc/kei-gateway/kei-gateway.toml"


def test_when_check_config_passes_then_it_prints_ok_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path)
    assert cli.main(["-c", str(path), "check-config"]) == exitcodes.OK
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and "peers: none" in out and "listeners: metrics 127.0.0.1:9464" in out


def test_when_check_config_fails_then_exit_code_is_2_and_every_problem_is_printed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, extra='bogus = 1\n[retention]\ninbox = "7 days"\n')
    os.chmod(tmp_path / "credentials" / "gateway.key", 0o640)
    assert cli.main(["-c", str(path), "check-config"]) == exitcodes.USAGE
    err = capsys.readouterr().err
    assert "listeners.metrics.bogus: unknown key" in err
    assert "retention.inbox" in err
    assert "kei-gateway check-config" in err


def test_when_the_config_file_does_not_exist_then_check_config_says_how_to_name_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-c", str(tmp_path / "none.toml"), "check-config"]) == exitcodes.USAGE
    assert "KEI_GATEWAY_CONFIG" in capsys.readouterr().err


def test_when_commands_are_registered_then_the_lazy_map_names_each_with_its_module() -> None:
    import argparse
    import importlib

    for module in cli.COMMAND_MODULES:
        parser = argparse.ArgumentParser()
        subparsers = parser.add_subparsers()
        importlib.import_module(module).register(subparsers)
        registered = set(subparsers.choices)
        assert registered == {c for c, m in cli.COMMANDS.items() if m == module}, module


@pytest.mark.integration  # a fresh interpreter
def test_when_a_command_is_run_then_only_its_module_is_imported() -> None:
    import subprocess
    import sys

    code = ("import sys, kei_gateway.cli.main as c; c.build_parser(c._command_of(['-c', 'x.toml', 'validate', 'f']));"
            "print('sqlalchemy' in sys.modules, 'twisted.internet.reactor' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.split() == ["False", "False"]
