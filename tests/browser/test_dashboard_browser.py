"""The operator dashboard in a real browser: Playwright (sync API) drives Debian's chromium
headless (``/usr/bin/chromium``, no browser download) against a real fleet process
(``FleetRuntime.run_in_thread``: the operator app with the dashboard, the device gateway and the
revocation follower, on SQLite, ports picked by the kernel) holding a real fleet
(tests/support/fleetworld, enrolled through the enrollment service, card-signed telemetry, a
signed firmware release).

Scenarios: an operator logs in and sees the overview's counts and plots; opens a device page
(certificates, the chain of evidence down to the verified ceremony record); revokes a device
with the form's confirmation, after which the page shows it revoked, the API agrees and the
overview shows the latency this process measured; an auditor is refused revocation on the page
(viewing the form and posting it: 403 with the reason). Each test saves a screenshot to
``artifacts/screenshots/<test>.png`` under the repository root and checks the file.

Skipped only when chromium (or the playwright package) is absent AND ``IOTID_REQUIRE_BROWSER``
is unset; CI sets it, so a missing browser fails there.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from browser.dashboard_fleet import Populated, firmware_signer, populate
from iotid.fleet.auth import NewToken, Role, create_token
from iotid.fleet.config import FleetConfig
from iotid.fleet.runtime import FleetRuntime, RunningFleet
from support.fleetworld import FleetWorld, build_world

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = bool(os.environ.get("IOTID_REQUIRE_BROWSER"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
BATCH = "web-a"
WAIT_S = 10.0

if not REQUIRED:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (IOTID_REQUIRE_BROWSER unset)", allow_module_level=True)
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright  # noqa: E402


@dataclass
class Fleet:
    running: RunningFleet
    world: FleetWorld
    data: Populated
    tokens: dict[Role, NewToken]

    @property
    def url(self) -> str:
        return self.running.api_url

    def api_state(self, uid: str) -> str:
        headers = {"Authorization": f"Bearer {self.tokens[Role.AUDITOR].secret}"}
        response = httpx.get(f"{self.url}/v1/devices/{uid}", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return str(response.json()["state"])

    def uid(self, index: int) -> str:
        return list(self.data.enrolled)[index]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("web")
    world = build_world(base, {BATCH: ("p256", 4)})
    config = FleetConfig(
        world.fleet_dir, f"sqlite:///{base / 'fleet.sqlite3'}", api_port=0, gateway_port=0
    )
    runtime = FleetRuntime(config, ceremony_record=world.ceremony_dir / "ceremony.jsonl")
    data = populate(runtime.db, world, runtime.keys, enroll=3, signer=firmware_signer(world, BATCH))
    tokens = {role: create_token(runtime.db, role, dt.timedelta(hours=1)) for role in Role}
    with runtime.run_in_thread() as running:
        yield Fleet(running, world, data, tokens)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is absent and IOTID_REQUIRE_BROWSER is set")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Chromium's sandbox refuses to run as root (containers, CI); otherwise keep it.
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=args)
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_S * 1000)
    yield page
    context.close()


def _login(page: Page, fleet: Fleet, role: Role) -> None:
    page.goto(f"{fleet.url}/dashboard")
    expect(page).to_have_url(re.compile(r"/dashboard/login$"))
    page.fill("#token", fleet.tokens[role].secret)
    page.click("#login")
    expect(page).to_have_url(re.compile(r"/dashboard$"))
    expect(page.locator("#role")).to_have_text(role.value)


def _screenshot(page: Page, request: pytest.FixtureRequest, suffix: str = "") -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name) + suffix
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.is_file() and path.stat().st_size > 0, path
    return path


def test_overview(page: Page, fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _login(page, fleet, Role.OPERATOR)
    expect(page.locator("#total-devices")).to_have_text("4")
    expect(page.locator("#total-enrollments")).to_have_text("3")
    for title in (
        "Devices by state",
        "Devices by batch and state",
        "Accepted enrollments over time",
        "Rollout of fw-1.2.3 to group default",
    ):
        expect(page.locator(f'svg[aria-label="{title}"]')).to_be_visible()
    expect(page.locator("#by-batch table")).to_contain_text(BATCH)
    expect(page.locator("#revocations")).to_contain_text("as seen by this fleet process")
    _screenshot(page, request)


def test_device_page(page: Page, fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _login(page, fleet, Role.OPERATOR)
    uid = fleet.uid(0)
    page.click("text=Devices")
    page.click(f'a[href="/dashboard/devices/{uid}"]')
    expect(page.locator("#device-uid")).to_have_text(uid)
    expect(page.locator("#link-certificates")).to_contain_text(
        f"serial {fleet.data.enrolled[uid].serial}"
    )
    expect(page.locator("#chain-verdict")).to_contain_text("down to the ceremony record")
    expect(page.locator("#ceremony-detail")).to_contain_text("2 of 3")
    for link in ("certificates", "attestation", "batch", "root", "ceremony"):
        expect(page.locator(f"#link-{link}")).to_have_class(re.compile(r"\bok\b"))
    expect(page.locator('svg[aria-label="Telemetry: temp_c"]')).to_be_visible()
    expect(page.locator("#audit")).to_contain_text("enrollment.accepted")
    expect(page.locator("#revoke-form")).to_be_visible()
    _screenshot(page, request)


def test_revoke(page: Page, fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _login(page, fleet, Role.OPERATOR)
    uid = fleet.uid(1)
    page.goto(f"{fleet.url}/dashboard/devices/{uid}")
    expect(page.locator("#device-state")).to_have_text("enrolled")
    page.select_option("#reason", "key_compromise")
    page.fill("#confirm_uid", uid[:-1] + ("0" if uid[-1] != "0" else "1"))  # a typo first
    page.click("#revoke-submit")
    expect(page.locator("#revoke-error")).to_contain_text("does not match")
    assert fleet.api_state(uid) == "enrolled"
    page.fill("#confirm_uid", uid.lower())
    _screenshot(page, request, "-confirm")
    page.click("#revoke-submit")
    expect(page).to_have_url(re.compile(rf"/dashboard/devices/{uid}\?done=revoked$"))
    expect(page.locator("#device-state")).to_have_text("revoked")
    expect(page.locator("#flash")).to_be_visible()
    expect(page.locator("#device-revocations")).to_contain_text("keyCompromise")
    assert fleet.api_state(uid) == "revoked"  # the API agrees
    _screenshot(page, request)

    # the follower of this very process applied it: the overview shows the latency
    deadline = time.monotonic() + WAIT_S
    while True:
        page.goto(f"{fleet.url}/dashboard")
        if page.locator("#latency-p50").count() or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    expect(page.locator("#latency-p50")).to_be_visible()
    expect(
        page.locator('svg[aria-label="Revocation latency as seen by this process"]')
    ).to_be_visible()
    _screenshot(page, request, "-overview")


def test_auditor_is_refused(page: Page, fleet: Fleet, request: pytest.FixtureRequest) -> None:
    _login(page, fleet, Role.AUDITOR)
    uid = fleet.uid(2)
    page.goto(f"{fleet.url}/dashboard/devices/{uid}")
    expect(page.locator("#revoke-not-allowed")).to_contain_text("auditor")
    expect(page.locator("#revoke-form")).to_have_count(0)
    csrf = page.locator('input[name="csrf"]').first.get_attribute("value")
    assert csrf

    with page.expect_response(re.compile(r"/revoke$")) as shown:
        page.click("#revoke-link")
    assert shown.value.status == 403
    expect(page.locator("#error-title")).to_have_text("Not allowed to revoke")
    expect(page.locator("#error-message")).to_contain_text("auditor role")
    _screenshot(page, request)

    posted = page.request.post(
        f"{fleet.url}/dashboard/devices/{uid}/revoke",
        form={"csrf": csrf, "confirm_uid": uid, "reason": "key_compromise"},
    )
    assert posted.status == 403 and "may look but not revoke" in posted.text()
    assert fleet.api_state(uid) == "enrolled"
