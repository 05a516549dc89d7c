"""`iotid fleet init` / `token create` / `audit verify` through the real CLI: the fleet directory
records where the ceremony record is (so traces and the dashboard verify the last link), and the
token secret is printed once."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from iotid.cli.main import app
from iotid.fleet.config import FleetConfig

runner = CliRunner()


def _ok(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_fleet_init_records_the_ceremony_record_and_serves_tokens(tmp_path: Path) -> None:
    cer, fleet = tmp_path / "cer", tmp_path / "fleet"
    _ok(
        "factory", "ceremony", "init", str(cer), "--quorum", "2-of-3",
        "--custodian", "alice", "--custodian", "bob", "--custodian", "carol",
    )  # fmt: skip
    shares = [str(cer / "shares" / f"{name}.share") for name in ("alice", "bob")]
    out = _ok(
        "fleet", "init", "--dir", str(fleet), "--factory", str(cer),
        "--shares", shares[0], "--shares", shares[1], "--api", "127.0.0.1:0",
    )  # fmt: skip
    assert "fleet ready" in out
    config = FleetConfig.load(fleet)
    assert config.ceremony_record == (cer / "ceremony.jsonl").resolve()
    assert config.db_url.startswith("sqlite:///")

    out = _ok("fleet", "token", "create", "--dir", str(fleet), "--role", "auditor")
    assert "(auditor)" in out and re.search(r"^[A-Za-z0-9_-]{32,}$", out, re.MULTILINE)
    _ok("fleet", "audit", "verify", "--dir", str(fleet))

    # A fleet directory is not re-initialised over itself, and the refusal is one clear line.
    again = runner.invoke(
        app,
        ["fleet", "init", "--dir", str(fleet), "--factory", str(cer),
         "--shares", shares[0], "--shares", shares[1]],
    )  # fmt: skip
    assert again.exit_code != 0
    assert "Traceback" not in again.output


def test_fleet_config_round_trips_the_ceremony_record(tmp_path: Path) -> None:
    config = FleetConfig(tmp_path, FleetConfig.default_db_url(tmp_path))
    config.save()
    assert FleetConfig.load(tmp_path).ceremony_record is None
    record = tmp_path / "cer" / "ceremony.jsonl"
    config.with_overrides(ceremony_record=record).save()
    assert FleetConfig.load(tmp_path).ceremony_record == record


def test_fleet_config_round_trips_the_nonce_rate_limit(tmp_path: Path) -> None:
    FleetConfig(tmp_path, FleetConfig.default_db_url(tmp_path), nonce_rate=0, nonce_burst=7).save()
    config = FleetConfig.load(tmp_path)
    assert (config.nonce_rate, config.nonce_burst) == (0, 7)
    assert (
        FleetConfig(tmp_path, "sqlite://").nonce_rate,
        FleetConfig(tmp_path, "sqlite://").nonce_burst,
    ) == (50.0, 100)
