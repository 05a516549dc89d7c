"""`iotid demo --devices 20` end to end: the console script in a fresh temporary directory, its
exit status, its JSON report and what it printed.

The demo makes a real ceremony and cards, runs the fleet on SQLite on ports it picks, and takes
every device through the lifecycle; this test checks the outcome the report states, not how
long it took (bench/bench_demo.py measures that).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

IOTID = Path(sys.executable).with_name("iotid")
DEVICES = 20


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    base = tmp_path_factory.mktemp("demo")
    state, out = base / "state", base / "report.json"
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    done = subprocess.run(
        [str(IOTID), "demo", "--devices", str(DEVICES), "--dir", str(state), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done, json.loads(out.read_text()), state


pytestmark = pytest.mark.slow


def test_every_step_passed(demo_run: tuple[Any, dict[str, Any], Path]) -> None:
    done, report, _state = demo_run
    assert report["ok"] is True
    assert report["devices"] == DEVICES
    assert all(step["ok"] for step in report["steps"]), report["steps"]
    names = [step["name"] for step in report["steps"]]
    for expected in (
        "key ceremony (2-of-3 quorum)",
        "personalisation line over SCP03",
        "GP test keys refused",
        "boot + enroll (attestation)",
        "telemetry over mutual TLS",
        "firmware rollout",
        "reboot into the new firmware",
        "tampered image refused",
        "key rotation",
        "device reported missing and revoked",
        "audit log verified",
        "trace to the ceremony record",
    ):
        assert expected in names
    assert "demo passed" in done.stdout
    for phase in ("boot + enroll", "telemetry", "firmware rollout", "rotation"):
        assert phase in done.stdout  # its progress bar and its row in the phase table


def test_every_device_went_through_the_lifecycle(
    demo_run: tuple[Any, dict[str, Any], Path],
) -> None:
    _done, report, _state = demo_run
    assert report["enrolled"] == DEVICES
    assert report["telemetry_sent"] == DEVICES
    # The signed image: VALID on every SE, staged, booted and confirmed.
    assert report["firmware_valid"] == report["firmware_applied"] == DEVICES
    assert report["firmware_confirmed"] == DEVICES
    # The tampered image: INVALID on every SE, applied nowhere.
    assert report["tampered_invalid"] == DEVICES
    assert report["tampered_applied"] == 0
    assert "altered after signing" in report["tampered_method"]
    # Every device rotated exactly one epoch up (the registry's view).
    before, after = report["epochs_before"], report["epochs_after"]
    assert len(before) == len(after) == DEVICES
    assert all(before[uid] >= 1 and after[uid] == before[uid] + 1 for uid in before)
    assert report["rotated"] == DEVICES
    phases = {p["name"]: p for p in report["phases"]}
    for name in ("boot + enroll", "telemetry", "firmware rollout", "tampered image", "rotation"):
        assert phases[name]["ok"] == DEVICES and phases[name]["failed"] == 0
        assert phases[name]["rate"] > 0
    for rate in ("enrollments/s", "telemetry/s", "firmware updates/s", "rotations/s"):
        assert report["rates"][rate] > 0


def test_one_device_revoked_with_a_measured_latency(
    demo_run: tuple[Any, dict[str, Any], Path],
) -> None:
    _done, report, _state = demo_run
    revocation = report["revocation"]
    assert revocation["uid"] in report["epochs_before"]
    assert revocation["latency_seconds"] is not None and revocation["latency_seconds"] > 0
    assert revocation["fleet_recorded_latency_seconds"] is not None
    assert revocation["new_connection_refused"] is True
    assert revocation["ocsp_status"] == "revoked"
    assert revocation["crl_lists_serial"] is True
    assert revocation["app_status"] == "revoked"


def test_audit_and_trace_down_to_the_ceremony(demo_run: tuple[Any, dict[str, Any], Path]) -> None:
    _done, report, state = demo_run
    assert report["audit_ok"] is True and report["audit_entries"] > DEVICES
    trace = report["trace"]
    assert trace["complete"] is True
    assert trace["uid"] in report["epochs_after"] and trace["uid"] != report["revocation"]["uid"]
    links = [link["name"] for link in trace["links"]]
    assert links[0].startswith("certificate") and links[-1] == "ceremony record"
    assert links[-2:] == ["issuance root", "ceremony record"]
    assert any(name.startswith("batch CA") for name in links)
    assert all(link["ok"] for link in trace["links"])
    assert trace["quorum"] == "2-of-3" and trace["ceremony_action"] == "root.key.generated"
    assert len(trace["custodians_present"]) >= 2
    # The state directory it was given holds the factory, the fleet and the devices.
    assert (state / "factory" / "ceremony.jsonl").is_file()
    assert (state / "fleet" / "fleet.sqlite3").is_file()


def test_no_secret_is_printed(demo_run: tuple[Any, dict[str, Any], Path]) -> None:
    done, _report, state = demo_run
    line_key = (state / "factory" / "batches" / "demo" / "line.key").read_text().strip()
    shares = [p.read_text() for p in (state / "factory" / "shares").glob("*")]
    printed = done.stdout + done.stderr
    assert line_key and line_key not in printed
    for share in shares:
        words = " ".join(share.split()[-5:])  # the tail of the mnemonic
        assert words not in printed
    assert "Traceback" not in printed
