"""The operator dashboard over HTTP (FastAPI TestClient) on SQLite and PostgreSQL, with a real
fleet (tests/support/fleetworld: ceremony, fleet keys, personalised cards; enrollment through the
enrollment service; card-signed telemetry; a signed firmware release): login with a token and
the cookie it sets, the overview's counts and plots, the device page down to a verified ceremony
record, revoke from the page through the revocation service (the API agrees, the audit log names
the token, this process's follower records the latency), the refusals (no session, an auditor
viewing or posting the revoke form, a forged CSRF token, a mistyped UID), HTML error pages,
hostile strings escaped; and the pure parts (charts, the latency record)."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import select, update

from browser.dashboard_fleet import Populated, firmware_signer, populate, send_telemetry
from iotid.fleet.app import FleetServices, create_fleet_app
from iotid.fleet.auth import NewToken, Role, create_token
from iotid.fleet.dashboard import charts
from iotid.fleet.dashboard.service import bucket_width, numeric_series
from iotid.fleet.dashboard.session import LOGIN_COOKIE, SESSION_COOKIE
from iotid.fleet.db import Database
from iotid.fleet.models import ApiToken, AuditEntry, Device
from iotid.fleet.revocation.follower import RevocationFollower
from iotid.fleet.revocation.index import RevokedEvent
from iotid.fleet.revocation.latency import RevocationLatency
from support.fleetworld import FleetWorld, build_world

HOUR = dt.timedelta(hours=1)
BATCH = "dash-a"
HOSTILE = "<script>alert(1)</script>"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LOGIN_CSRF = re.compile(r'name="login_csrf" value="([^"]+)"')


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FleetWorld:
    return build_world(tmp_path_factory.mktemp("dash"), {BATCH: ("p256", 3)})


@dataclass
class Dash:
    client: TestClient
    db: Database
    services: FleetServices
    tokens: dict[Role, NewToken]
    data: Populated
    world: FleetWorld

    def login(self, role: Role) -> None:
        self.client.cookies.clear()
        form = self.client.get("/dashboard/login")
        assert form.status_code == 200
        token = _LOGIN_CSRF.search(form.text)
        assert token is not None
        done = self.client.post(
            "/dashboard/login",
            data={"token": self.tokens[role].secret, "login_csrf": token.group(1)},
            follow_redirects=False,
        )
        assert done.status_code == 303 and done.headers["location"] == "/dashboard"
        cookie = done.headers["set-cookie"]
        assert f"{SESSION_COOKIE}=" in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie

    def csrf(self, path: str) -> str:
        match = _CSRF.search(self.client.get(path).text)
        assert match is not None
        return match.group(1)

    def api_state(self, uid: str) -> str:
        headers = {"Authorization": f"Bearer {self.tokens[Role.AUDITOR].secret}"}
        response = self.client.get(f"/v1/devices/{uid}", headers=headers)
        assert response.status_code == 200
        return str(response.json()["state"])


@pytest.fixture
def dash(fleet_db: Database, world: FleetWorld) -> Iterator[Dash]:
    data = populate(fleet_db, world, signer=firmware_signer(world, BATCH))
    services = FleetServices.build(
        fleet_db, world.keys, ceremony_record=world.ceremony_dir / "ceremony.jsonl"
    )
    tokens = {role: create_token(fleet_db, role, HOUR) for role in Role}
    with TestClient(create_fleet_app(services)) as client:
        yield Dash(client, fleet_db, services, tokens, data, world)


def _no_raw(response: Response, text: str = HOSTILE) -> None:
    assert text not in response.text


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# -- sessions ---------------------------------------------------------------------------------
def test_login_logout_and_refusals(dash: Dash) -> None:
    client = dash.client
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 303 and root.headers["location"] == "/dashboard"
    page = client.get("/dashboard", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/dashboard/login"
    uid = next(iter(dash.data.enrolled))
    anonymous = client.post(f"/dashboard/devices/{uid}/revoke", data={"csrf": "x"})
    assert anonymous.status_code == 401 and "Log in again" in anonymous.text
    assert dash.api_state(uid) == "enrolled"
    # the dashboard is not part of the API's schema
    assert not [p for p in client.get("/openapi.json").json()["paths"] if "dashboard" in p]

    form = client.get("/dashboard/login")
    login_csrf = _LOGIN_CSRF.search(form.text)
    assert login_csrf is not None and LOGIN_COOKIE in form.headers["set-cookie"]
    csp = form.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert form.headers["x-frame-options"] == "DENY"
    bad = client.post("/dashboard/login", data={"token": "nope", "login_csrf": login_csrf.group(1)})
    assert bad.status_code == 401 and "refused" in bad.text
    assert SESSION_COOKIE not in client.cookies
    forged = client.post(
        "/dashboard/login",
        data={"token": dash.tokens[Role.ADMIN].secret, "login_csrf": "forged"},
    )
    assert forged.status_code == 403 and SESSION_COOKIE not in client.cookies

    dash.login(Role.OPERATOR)
    overview = client.get("/dashboard")
    assert overview.status_code == 200 and 'id="role">operator<' in overview.text
    assert client.post("/dashboard/logout", data={"csrf": "forged"}).status_code == 403
    out = client.post(
        "/dashboard/logout", data={"csrf": dash.csrf("/dashboard")}, follow_redirects=False
    )
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert client.get("/dashboard", follow_redirects=False).status_code == 303

    dash.login(Role.AUDITOR)  # a token revoked in the registry ends the session at once
    with dash.db.transaction() as session:
        session.execute(
            update(ApiToken)
            .where(ApiToken.id == dash.tokens[Role.AUDITOR].token_id)
            .values(revoked_at=dt.datetime.now(dt.UTC))
        )
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


# -- overview ---------------------------------------------------------------------------------
def test_overview_counts_and_plots(dash: Dash) -> None:
    dash.login(Role.AUDITOR)
    page = dash.client.get("/dashboard")
    assert page.status_code == 200
    text = page.text
    assert 'id="total-devices">3<' in text
    assert 'id="count-enrolled">2<' in text and 'id="count-manufactured">1<' in text
    assert 'id="count-revoked">0<' in text
    assert 'id="total-enrollments">2<' in text
    for title in (
        "Devices by state",
        "Devices by batch and state",
        "Accepted enrollments over time",
        "Rollout of fw-1.2.3 to group default",
    ):
        assert f'aria-label="{title}"' in text, title
    assert text.count("<svg") >= 5
    assert "applied 1 (33%)" in text  # one of the group's three devices applied the release
    assert f'href="/dashboard/devices?batch={BATCH}"' in text
    assert "as seen by this fleet process" in text and "Nothing revoked." in text

    listing = dash.client.get("/dashboard/devices", params={"state": "enrolled"})
    assert listing.status_code == 200
    for uid in dash.data.enrolled:
        assert f'href="/dashboard/devices/{uid}"' in listing.text
    assert dash.data.manufactured[0] not in listing.text
    assert dash.client.get("/dashboard/devices", params={"state": "bogus"}).status_code == 422


# -- device page ------------------------------------------------------------------------------
def test_device_page_down_to_the_ceremony(dash: Dash) -> None:
    dash.login(Role.AUDITOR)
    uid, result = next(iter(dash.data.enrolled.items()))
    page = dash.client.get(f"/dashboard/devices/{uid.lower()}")
    assert page.status_code == 200
    text = page.text
    assert 'id="device-state">enrolled<' in text
    assert f"serial {result.serial}" in text
    assert 'class="link ok" id="link-certificates"' in text
    assert 'class="link ok" id="link-attestation"' in text
    assert 'class="link ok" id="link-ceremony"' in text
    assert "complete: every link holds, down to the ceremony record" in text
    assert "quorum <strong>2 of 3</strong>" in text
    for action in ("device.state_changed", "enrollment.accepted"):
        assert f"<td>{action}</td>" in text, action
    for field in ("rssi", "seq", "temp_c"):
        assert f'aria-label="Telemetry: {field}"' in text
    assert "fw-1.2.3" in text and "applied" in text
    # an auditor sees why there is no form, and the way to the (refused) form
    assert 'id="revoke-not-allowed"' in text and 'id="revoke-form"' not in text

    missing = dash.client.get("/dashboard/devices/00FF00FF")
    assert missing.status_code == 404 and "no device 00FF00FF" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    bad = dash.client.get("/dashboard/devices/not-a-uid")
    assert bad.status_code == 422 and "hexadecimal" in bad.text

    manufactured = dash.client.get(f"/dashboard/devices/{dash.data.manufactured[0]}")
    assert manufactured.status_code == 200 and "None issued yet" in manufactured.text


# -- revoke -----------------------------------------------------------------------------------
def _revoked_entries(db: Database, uid: str) -> list[str]:
    with db.transaction(write=False) as session:
        return list(
            session.execute(
                select(AuditEntry.actor).where(
                    AuditEntry.action == "device.revoked", AuditEntry.subject == f"device:{uid}"
                )
            ).scalars()
        )


def test_revoke_from_the_page(dash: Dash) -> None:
    latency = dash.services.revocation_latency
    follower = RevocationFollower(dash.db, on_event=latency.observe, poll_interval=0.05)
    follower.start()
    try:
        assert follower.ready.wait(10)
        dash.login(Role.OPERATOR)
        uid = next(iter(dash.data.enrolled))
        path = f"/dashboard/devices/{uid}/revoke"
        page = dash.client.get(f"/dashboard/devices/{uid}")
        assert 'id="revoke-form"' in page.text
        csrf = dash.csrf(f"/dashboard/devices/{uid}")
        assert dash.client.get(path).status_code == 200

        forged = dash.client.post(
            path, data={"csrf": "forged", "confirm_uid": uid, "reason": "key_compromise"}
        )
        assert forged.status_code == 403 and "CSRF" in forged.text
        typo = dash.client.post(
            path, data={"csrf": csrf, "confirm_uid": uid[:-2] + "00", "reason": "key_compromise"}
        )
        assert typo.status_code == 422 and "does not match" in typo.text
        odd = dash.client.post(path, data={"csrf": csrf, "confirm_uid": uid, "reason": "whim"})
        assert odd.status_code == 422 and "listed reasons" in odd.text
        assert dash.api_state(uid) == "enrolled" and _revoked_entries(dash.db, uid) == []

        done = dash.client.post(
            path,
            data={"csrf": csrf, "confirm_uid": uid.lower(), "reason": "key_compromise"},
            follow_redirects=False,
        )
        assert done.status_code == 303
        assert done.headers["location"] == f"/dashboard/devices/{uid}?done=revoked"
        shown = dash.client.get(done.headers["location"])
        assert 'id="device-state">revoked<' in shown.text and 'id="flash"' in shown.text
        assert "revoked" in shown.text and "keyCompromise" in shown.text
        assert dash.api_state(uid) == "revoked"  # the API agrees
        actor = f"token:{dash.tokens[Role.OPERATOR].token_id}"
        assert _revoked_entries(dash.db, uid) == [actor]

        # this process's follower applied it: the overview shows its latency
        assert _wait_for(lambda: len(latency) == 1)
        overview = dash.client.get("/dashboard").text
        assert 'id="count-revoked">1<' in overview and 'id="latency-p50"' in overview
        assert "not by this process" not in overview
        assert 'aria-label="Revocation latency as seen by this process"' in overview
        again = dash.client.get(path)
        assert again.status_code == 200 and "already revoked" in again.text
    finally:
        follower.stop()


def test_auditor_is_refused_on_the_page(dash: Dash) -> None:
    dash.login(Role.AUDITOR)
    uid = next(iter(dash.data.enrolled))
    path = f"/dashboard/devices/{uid}/revoke"
    viewing = dash.client.get(path)
    assert viewing.status_code == 403
    assert "auditor role, which may look but not revoke" in viewing.text
    assert 'id="revoke-form"' not in viewing.text
    csrf = dash.csrf(f"/dashboard/devices/{uid}")  # a valid token: the role alone refuses
    posting = dash.client.post(
        path, data={"csrf": csrf, "confirm_uid": uid, "reason": "key_compromise"}
    )
    assert posting.status_code == 403 and "needs the admin or operator role" in posting.text
    assert "Traceback" not in posting.text
    assert dash.api_state(uid) == "enrolled" and _revoked_entries(dash.db, uid) == []


# -- escaping ---------------------------------------------------------------------------------
def test_hostile_strings_are_escaped(dash: Dash) -> None:
    uid, result = next(iter(dash.data.enrolled.items()))
    with dash.db.transaction() as session:  # a group name no API accepts, written by hand
        session.execute(update(Device).where(Device.uid == uid).values(group_name=HOSTILE))
    card = dash.world.batches[BATCH].cards[0]
    assert card.uid_hex == uid
    send_telemetry(dash.db, card, "p256", result, {HOSTILE: 1, "note": HOSTILE, '"><img src=x>': 2})
    dash.login(Role.ADMIN)
    for path in (
        "/dashboard",
        f"/dashboard/devices/{uid}",
        f"/dashboard/devices/{uid}/revoke",
        "/dashboard/devices?batch=" + HOSTILE,
    ):
        page = dash.client.get(path)
        assert page.status_code == 200, path
        _no_raw(page)
        _no_raw(page, "<img src=x>")
    assert "&lt;script&gt;" in dash.client.get("/dashboard").text
    assert "Rollout of no release to group &lt;script&gt;" in dash.client.get("/dashboard").text


# -- pure parts -------------------------------------------------------------------------------
def test_charts_escape_and_handle_edges() -> None:
    svg = charts.bar_chart([(HOSTILE, 3), ("b", 0)], title=HOSTILE, colors={"b": "red;x"})
    assert HOSTILE not in svg and "&lt;script&gt;" in svg and 'fill="#9aa5b1"' in svg
    assert "no data yet" in charts.bar_chart([], title="empty")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    series = charts.time_series(
        [(now, 1.0), (now + HOUR, 4.0)], title=HOSTILE, style="line", unit=HOSTILE
    )
    assert HOSTILE not in series and series.count("<circle") == 2
    bars = charts.stacked_bars(
        [(HOSTILE, {"active": 2, HOSTILE: 1})], ["active", HOSTILE], title="t"
    )
    assert HOSTILE not in bars and bars.count("<rect") == 4  # two parts, two legend keys
    bar = charts.progress_bar([("applied", 5, "#2e9d5b")], 10, title="p")
    assert "applied 5 (50%)" in bar and "remaining 5 (50%)" in bar
    assert charts.progress_bar([], 0, title="none").count("<rect") >= 1


def test_bucket_width_and_numeric_series() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert bucket_width(t0, t0) == 1
    assert bucket_width(t0, t0 + dt.timedelta(minutes=30)) == 60
    assert bucket_width(t0, t0 + dt.timedelta(days=3)) == 6 * 3600
    assert bucket_width(t0, t0 + dt.timedelta(days=3650)) > 30 * 86400
    got = numeric_series(
        [
            (t0 + HOUR, b'{"a": 2, "b": true, "c": "x"}'),
            (t0, b'{"a": 1, "d": 1e999}'),
            (t0, b"not json"),
            (t0, b"[1, 2]"),
        ]
    )
    assert got == {"a": ((t0, 1.0), (t0 + HOUR, 2.0))}


def test_latency_record_is_bounded() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    now = [t0]
    record = RevocationLatency(capacity=3, clock=lambda: now[0])
    for i in range(1, 6):
        now[0] = t0 + dt.timedelta(milliseconds=100 * i)
        event = RevokedEvent(i, "device", f"{i:02X}", frozenset({f"{i:02X}"}), frozenset(), t0)
        applied = record.observe(event)
        assert applied.latency_s == pytest.approx(0.1 * i)
    assert [a.event_id for a in record.recent()] == [5, 4, 3] and len(record) == 3
    summary = record.summary()
    assert (summary.count, summary.p50_s, summary.max_s) == (3, pytest.approx(0.4), 0.5)
    assert RevocationLatency().summary().count == 0
    with pytest.raises(ValueError):
        RevocationLatency(capacity=0)
