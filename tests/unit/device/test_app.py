"""The device application's failure policy without a fleet: a revoked device never touches the
SE or the network (and says so at once, across restarts), a missing SE is retried with growing,
jittered backoff, an SE that is not personalised is FAILED (terminal); the swarm over such
devices (results in order, errors per device, ``on_done`` per device); the backoff, the
configuration checks and the one-line cycle report.

The whole life against the real fleet is tests/integration/test_device_app.py.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from iotid.device import (
    CycleReport,
    DeviceApp,
    DeviceConfig,
    DeviceRevoked,
    DeviceState,
    DeviceStateError,
    DeviceStatus,
    RunSummary,
    SecureElementUnavailable,
    Swarm,
)
from iotid.device.outcomes import Backoff
from iotid.host.secureelement import SecureElement
from iotid.se.card import Card
from iotid.transport.base import CardRemovedError
from iotid.transport.loopback import LoopbackConnection

API = "http://127.0.0.1:9"  # nothing listens: any traffic would fail loudly
GATEWAY = "127.0.0.1:9"


class Reader:
    """``open_se`` over a reader: empty for the first ``empty`` calls, then ``card``."""

    def __init__(self, card: Card | None, empty: int = 0) -> None:
        self.card = card
        self.empty = empty
        self.calls = 0

    def __call__(self) -> SecureElement:
        self.calls += 1
        if self.calls <= self.empty or self.card is None:
            raise CardRemovedError("no card in the reader")
        return SecureElement(LoopbackConnection(self.card))


def make(
    tmp_path: Path, reader: Reader, sleeps: list[float] | None = None, initial: float = 1.0
) -> DeviceApp:
    return DeviceApp(
        reader,
        API,
        gateway=GATEWAY,
        state_dir=tmp_path / "state",
        config=DeviceConfig(backoff_initial=initial, backoff_max=8 * initial),
        sleep=(sleeps.append if sleeps is not None else lambda _s: None),
        rng=random.Random(7),
    )


def revoked_app(tmp_path: Path, name: str, reader: Reader) -> DeviceApp:
    DeviceState(tmp_path / name).update(uid=name.upper(), revoked=True, gateway=GATEWAY)
    return DeviceApp(reader, API, gateway=GATEWAY, state_dir=tmp_path / name)


def test_a_revoked_device_stays_silent(tmp_path: Path) -> None:
    reader = Reader(None)
    app = revoked_app(tmp_path, "aa01", reader)
    assert app.status is DeviceStatus.REVOKED and app.uid == "AA01"
    for call in (app.boot, app.send_telemetry, app.poll_commands, app.update_firmware,
                 app.rotate_if_due, app.enroll):  # fmt: skip
        with pytest.raises(DeviceRevoked):
            call()
    report = app.cycle()
    assert report.status is DeviceStatus.REVOKED and not report.ok
    summary = app.run(threading.Event(), cycles=10)
    assert (summary.cycles, summary.status) == (1, DeviceStatus.REVOKED)
    assert reader.calls == 0  # not even the SE


def test_missing_se_backs_off_then_a_bad_card_fails(tmp_path: Path) -> None:
    card = Card.create(tmp_path / "blank")  # never personalised
    sleeps: list[float] = []
    reader = Reader(card, empty=3)
    app = make(tmp_path, reader, sleeps)
    for _ in range(3):
        with pytest.raises(SecureElementUnavailable):
            app.boot()
        assert app.status is DeviceStatus.SE_UNAVAILABLE
    # Each re-open waited for the backoff: growing, jittered, capped.
    assert len(sleeps) == 2 and sleeps[0] < sleeps[1] <= 8.0
    with pytest.raises(DeviceStateError):
        app.boot()  # the card is there but not usable: terminal
    assert app.status is DeviceStatus.FAILED
    assert "not usable" in str(app.state.get("failed"))
    calls = reader.calls
    assert app.cycle().status is DeviceStatus.FAILED and reader.calls == calls


def test_cycle_reports_an_se_outage_instead_of_raising(tmp_path: Path) -> None:
    app = make(tmp_path, Reader(None), initial=0.001)
    report = app.cycle()
    assert report.status is DeviceStatus.SE_UNAVAILABLE
    assert report.error is not None and "no card" in report.error
    stop = threading.Event()
    summary = app.run(stop, cycles=3)
    assert (summary.cycles, summary.failed, summary.status) == (
        3,
        3,
        DeviceStatus.SE_UNAVAILABLE,
    )


def test_swarm_phases(tmp_path: Path) -> None:
    apps = [revoked_app(tmp_path, f"bb{i:02d}", Reader(None)) for i in range(5)]
    swarm = Swarm(apps, workers=3)
    done: list[tuple[int, bool]] = []
    boot = swarm.phase("boot", DeviceApp.boot, on_done=lambda i, ok: done.append((i, ok)))
    assert (boot.name, boot.ok, boot.failed) == ("boot", 0, 5)
    assert sorted(done) == [(i, False) for i in range(5)]
    assert set(boot.errors) == {f"BB{i:02d}" for i in range(5)}
    assert all(e.startswith("DeviceRevoked") for e in boot.errors.values())
    assert boot.results == [None] * 5 and len(boot.durations) == 5
    cycle = swarm.phase("cycle", DeviceApp.cycle)
    assert cycle.ok == 5 and cycle.errors == {}
    assert [r.index for r in cycle.results] == [1] * 5  # type: ignore[attr-defined]
    assert cycle.rate > 0 and cycle.percentile(0.5) <= cycle.percentile(1.0)
    assert Swarm([], workers=1).phase("empty", DeviceApp.cycle).ok == 0
    with pytest.raises(ValueError):
        Swarm(apps, workers=0)


def test_backoff() -> None:
    backoff = Backoff(0.5, 4.0, random.Random(1))
    delays = [backoff.failure() for _ in range(8)]
    ceilings = [min(4.0, 0.5 * 2**n) for n in range(8)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    backoff.success()
    assert backoff.failure() <= 0.5


@pytest.mark.parametrize(
    "kw",
    [{"telemetry_interval": -1}, {"backoff_initial": 0}, {"backoff_max": 0.1}],
)
def test_config_refuses_nonsense(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DeviceConfig(**kw)  # type: ignore[arg-type]


def test_bad_gateway_address(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DeviceApp(Reader(None), API, gateway="host:notaport", state_dir=tmp_path)


def test_report_line_and_summary() -> None:
    report = CycleReport(index=3, status=DeviceStatus.RUNNING, telemetry_id="17")
    assert report.ok and report.line() == "#3  running  telemetry 17"
    failed = CycleReport(index=4, status=DeviceStatus.FLEET_UNAVAILABLE, error="503")
    summary = RunSummary()
    summary.add(report)
    summary.add(failed)
    assert (summary.cycles, summary.ok, summary.failed, summary.telemetry) == (2, 1, 1, 1)
    assert summary.last_error == "503" and summary.status is DeviceStatus.FLEET_UNAVAILABLE
    assert "error: 503" in failed.line()
