"""`iotid demo` runs what is built so far and reports every step."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from iotid.cli.main import app
from iotid.demo import TOTAL_STEPS, run_demo


def test_demo_report(tmp_path: Path) -> None:
    report = run_demo(tmp_path)
    assert report.ok, [s for s in report.steps if not s.ok]
    assert len(report.steps) == TOTAL_STEPS
    names = [s.name for s in report.steps]
    assert "GP test keys refused" in names and "restart from NVM" in names
    assert "attestation quote (fleet verifier)" in names
    assert "mutual TLS 1.3, key in the SE" in names and "key rotation" in names
    assert "key ceremony (2-of-3 quorum)" in names and "personalisation line over SCP03" in names
    assert report.apdus_per_second > 0


def test_demo_command(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "demo passed" in result.output
    assert "Not built yet" in result.output
