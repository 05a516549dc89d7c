"""`iotid demo` reports a failed step as a failed report and exits non-zero; its arguments are
checked. The full walk over 20 devices is tests/e2e/test_demo_fleet.py."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from iotid.cli.main import app
from iotid.demo import DemoReport, Step, run_demo


def test_a_failed_step_fails_the_report_and_ends_the_walk(tmp_path: Path) -> None:
    # A ceremony directory that already holds a record: the factory refuses to overwrite it.
    (tmp_path / "factory").mkdir()
    (tmp_path / "factory" / "ceremony.jsonl").write_text("{}\n")
    events = []
    report = run_demo(tmp_path, devices=2, on_event=events.append)
    assert not report.ok
    assert [s.name for s in report.steps] == ["key ceremony (2-of-3 quorum)"]
    assert "already holds a ceremony" in report.steps[0].detail
    assert [(e.name, e.ok) for e in events] == [("key ceremony (2-of-3 quorum)", False)]
    doc = json.loads(report.to_json())
    assert doc["ok"] is False and doc["steps"][0]["ok"] is False
    assert not (tmp_path / "fleet").exists()  # nothing after the failed step ran


def test_report_ok_needs_steps_and_all_of_them_ok() -> None:
    report = DemoReport(devices=2)
    assert not report.ok  # nothing ran
    report.steps.append(Step("a", True, ""))
    assert report.ok
    report.steps.append(Step("b", False, "broken"))
    assert not report.ok and [s.name for s in report.failed_steps] == ["b"]


def test_the_command_exits_1_when_a_step_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app, ["demo", "--devices", "2", "--dir", str(blocker / "state"), "--json", str(out)]
    )
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output and "demo failed" in result.output
    doc = json.loads(out.read_text())
    assert doc["ok"] is False
    assert doc["steps"][-1]["name"] == "unexpected error"


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["demo", "--devices", "1"])
    assert result.exit_code == 2
    (tmp_path / "something").write_text("x")
    result = runner.invoke(app, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "not empty" in result.output
