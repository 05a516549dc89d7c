"""The demo's walk: the factory, the fleet and N devices through the whole lifecycle.

Scope: :func:`run_demo` runs every step in order, records each as ok or failed with a one-line
detail (a failed step ends the walk: what follows depends on it; an unexpected exception becomes
a failed step, never a traceback), times the device phases, and fills a :class:`DemoReport`:

1. a 2-of-3 key ceremony; the fleet's issuing CA certified by the root with the quorum;
2. one P-256 batch trusting the fleet's rotation authority; N cards off the personalisation line
   over SCP03 (per-card progress); the GP test keys refused on a personalised card;
3. the fleet (SQLite in the state directory, localhost ports it picks) in a background thread;
   the operator imports the signed manifest over the API;
4. device phases through a :class:`~iotid.device.swarm.Swarm`: boot + enroll (attestation),
   telemetry over mutual TLS with the key in the SE, a signed MCUboot release rolled out
   (VALID, applied, confirmed after a reboot), a tampered release every SE refuses, a rotation
   on the operator's schedule (every device to epoch + 1), and telemetry again on the rotated
   credentials; a corrupted MCUboot image is refused by the fleet at publish;
5. one device reported missing: it stops cycling, its credential holds a live gateway
   connection, the operator revokes it, the cut is timed (``phases.measure_revocation``);
6. the audit log's hash chain verified over the API, one device's trace down to the ceremony
   record (the fleet's walk over the API; the record copy verified against the root here), each
   card's anti-rollback floor read back.

Not in scope: rendering (the CLI), the device application and the fleet themselves.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from iotid.demo import factory_side as factory
from iotid.demo import phases
from iotid.demo.fleet_side import Operator, OperatorError, free_port, operator_tokens, start_fleet
from iotid.demo.report import DemoEvent, DemoReport, EventKind, PhaseTiming, Step
from iotid.demo.tracechain import trace_chain
from iotid.device.app import BootReport, DeviceApp
from iotid.device.gateway import FirmwareOutcome
from iotid.device.swarm import PhaseResult, Swarm
from iotid.factory.ceremony import CeremonyError
from iotid.fleet.runtime import RunningFleet

__all__ = ["run_demo"]

T = TypeVar("T")
GROUP = "default"
GOOD = ("fw-1.1.0", "1.1.0", 2)
TAMPERED = ("fw-1.2.0", "1.2.0", 3)
TAMPERED_METHOD = (
    "a compromised build path: the factory signed v1.2.0 (raw image + detached signature), then "
    "the image was altered after signing; the fleet does not hold the firmware key and cannot "
    "judge a raw image's signature, so it published it; each device's SE verified the image "
    "against the signature itself"
)


class _StepFailedError(Exception):
    pass


class _Walk:
    def __init__(
        self,
        base: Path,
        report: DemoReport,
        on_event: Callable[[DemoEvent], None],
        workers: int,
        firmware_size: int,
    ) -> None:
        self.base = base
        self.report = report
        self.emit = on_event
        self.workers = workers
        self.firmware_size = firmware_size
        self.fleet: RunningFleet | None = None
        self.apps: list[DeviceApp] = []
        self.started = time.perf_counter()

    # -- bookkeeping -----------------------------------------------------------------------------
    def step(self, name: str, ok: bool, detail: str) -> None:
        now = time.perf_counter()
        self.report.steps.append(Step(name, ok, detail, round(now - self.started, 3)))
        self.started = now
        self.emit(DemoEvent(EventKind.STEP, name, ok=ok, detail=detail))
        if not ok:
            raise _StepFailedError(name)

    def phase(
        self, name: str, apps: Sequence[DeviceApp], fn: Callable[[DeviceApp], T]
    ) -> PhaseResult:
        self.emit(DemoEvent(EventKind.PHASE, name, total=len(apps)))

        def done(_index: int, ok: bool) -> None:
            self.emit(DemoEvent(EventKind.ADVANCE, name, ok=ok))

        result = Swarm(apps, workers=self.workers).phase(name, fn, on_done=done)
        self.report.phases.append(
            PhaseTiming.of(
                name, result.durations, result.ok, result.failed, result.wall_seconds, result.errors
            )
        )
        return result

    def phase_step(self, result: PhaseResult, name: str, detail: str) -> None:
        ok = result.failed == 0 and result.ok == len(result.results)
        if not ok:
            first = next(iter(result.errors.items()), ("?", "no reason given"))
            detail = f"{result.failed} of {len(result.results)} failed; {first[0]}: {first[1]}"
        self.step(name, ok, detail)

    # -- the walk --------------------------------------------------------------------------------
    def run(self) -> None:
        n = self.report.devices
        try:
            cer = factory.run_ceremony(self.base / "factory")
        except CeremonyError as exc:
            self.step("key ceremony (2-of-3 quorum)", False, str(exc))
            raise
        self.step(
            "key ceremony (2-of-3 quorum)",
            True,
            f"issuance root {cer.root_fingerprint[:16]}; hash-chained record tied to the root; "
            f"custodians {', '.join(factory.CUSTODIANS)}",
        )
        api_port, gateway_port = free_port(), free_port()
        keys, config = factory.create_fleet(cer, self.base / "fleet", api_port, gateway_port)
        self.step(
            "fleet issuing CA certified by the root",
            True,
            f"issuing CA {keys.issuing.certificate.subject.rfc4514_string()} (bob and carol "
            "present), root CRL, gateway certificate, rotation authority",
        )
        self.emit(DemoEvent(EventKind.PHASE, "personalisation", total=n))
        seen = [0]

        def personalised(done: int, _count: int) -> None:
            while seen[0] < done:
                seen[0] += 1
                self.emit(DemoEvent(EventKind.ADVANCE, "personalisation"))

        t0 = time.perf_counter()
        batch = factory.make_batch(cer, keys, n, self.base / "line", personalised)
        wall = time.perf_counter() - t0
        self.report.phases.append(PhaseTiming.of("personalisation", [wall / n] * n, n, 0, wall))
        self.step(
            "personalisation line over SCP03",
            len(batch.uids) == n,
            f"{n} cards: per-card ISD keys, batch master key, attestation key made on the card "
            f"and certified by batch CA {batch.name!r}, firmware key, SECURED; signed manifest "
            "verified against the root",
        )
        self.step("GP test keys refused", *factory.test_keys_refused(batch.card_dirs[0]))

        self.fleet = start_fleet(config)
        tokens = operator_tokens(self.fleet)
        op = Operator(self.fleet.api_url, tokens.operator)
        auditor = Operator(self.fleet.api_url, tokens.auditor)
        host, port = self.fleet.gateway_address
        self.step(
            "fleet started",
            True,
            f"API {self.fleet.api_url}, gateway {host}:{port} (mutual TLS), SQLite in "
            f"{config.directory}; operator and auditor tokens made",
        )
        imported = op.import_batch(batch.manifest_bytes, batch.signature)
        self.step(
            "signed manifest imported",
            imported.get("devices") == n,
            f"batch {imported.get('batch')}: {imported.get('devices')} devices manufactured",
        )
        fleet_view = phases.Fleetside(self.fleet.api_url, f"{host}:{port}", keys.ca_bundle_pem)
        self.apps = phases.make_apps(batch.card_dirs, self.base / "devices", fleet_view)
        self.devices_phases(cer.directory, op, batch.uids)
        self.revocation(batch, fleet_view, op, keys.issuing.certificate)
        self.audit(auditor, cer.directory, batch.uids[0])
        for app in self.apps:
            app.close()
        floors = phases.card_floors(batch.card_dirs)
        want = GOOD[2]
        raised = sum(1 for f in floors if f >= want)
        self.step(
            "anti-rollback floor raised on every card",
            raised == n,
            f"{raised} of {n} cards hold anti-rollback floor {want} "
            f"(v{GOOD[1]}); an image below it is refused from now on",
        )

    def devices_phases(self, factory_dir: Path, op: Operator, uids: list[str]) -> None:
        n = len(self.apps)
        apps = self.apps
        result = self.phase("boot + enroll", apps, lambda app: app.boot())
        epochs = {
            d["uid"]: int(d["key_epoch"]) for d in op.devices() if d["state"] != "manufactured"
        }
        self.report.enrolled = sum(1 for uid in uids if uid in epochs)
        self.report.epochs_before = {uid: epochs.get(uid, 0) for uid in uids}
        self.report.rates["enrollments/s"] = _rate(result)
        self.phase_step(
            result,
            "boot + enroll (attestation)",
            f"{self.report.enrolled} of {n} devices: identity key provisioned in the SE, quote "
            "verified to the ceremony's root, client certificate issued",
        )

        def telemetry(app: DeviceApp) -> str:
            return app.send_telemetry({"reading": "temperature", "celsius": 21.5, "seq": 1})

        result = self.phase("telemetry", apps, telemetry)
        self.report.telemetry_sent = result.ok
        self.report.rates["telemetry/s"] = _rate(result)
        self.phase_step(
            result, "telemetry over mutual TLS", f"{result.ok} signed readings, key in the SE"
        )

        good = factory.sign_firmware(
            factory_dir,
            secrets.token_bytes(self.firmware_size),
            name=GOOD[0],
            version=GOOD[1],
            security_counter=GOOD[2],
            raw=False,
        )
        op.publish_firmware(good.name, good.image, None)
        op.assign(GROUP, good.name)
        corrupt = bytearray(good.image)
        corrupt[len(corrupt) // 2] ^= 0x01
        try:
            op.publish_firmware("fw-1.1.0-corrupt", bytes(corrupt), None)
            refused = "published"
        except OperatorError as exc:
            refused = exc.code if exc.status == 422 else f"HTTP {exc.status}"
        self.step(
            "signed release published",
            refused != "published",
            f"MCUboot v{good.version} (security counter {good.security_counter}, "
            f"{len(good.image)} bytes) signed by the factory key, assigned to group {GROUP!r}; "
            f"a corrupted copy was refused at publish ({refused})",
        )
        result = self.phase("firmware rollout", apps, lambda app: app.update_firmware())
        outcomes = [r for r in result.results if isinstance(r, FirmwareOutcome)]
        self.report.firmware_valid = sum(1 for o in outcomes if o.verdict.valid)
        self.report.firmware_applied = sum(1 for o in outcomes if o.applied)
        self.report.rates["firmware updates/s"] = _rate(result)
        self.phase_step(
            result,
            "firmware rollout",
            f"{self.report.firmware_valid} VALID in the SE, {self.report.firmware_applied} staged "
            "for the bootloader",
        )
        if self.report.firmware_valid != n or self.report.firmware_applied != n:
            self.step("firmware rollout", False, "not every device verified and applied it")
        result = self.phase("reboot", apps, lambda app: app.reboot())
        boots = [r for r in result.results if isinstance(r, BootReport)]
        self.report.firmware_confirmed = sum(1 for b in boots if b.firmware_confirmed)
        rollout = op.rollout(GROUP)
        self.phase_step(
            result,
            "reboot into the new firmware",
            f"{self.report.firmware_confirmed} of {n} booted it and confirmed it through the SE; "
            f"fleet rollout: {rollout.get('reported_version_count')} run "
            f"v{rollout.get('version')}, {rollout.get('valid')} reported applied",
        )
        if self.report.firmware_confirmed != n or rollout.get("valid") != n:
            self.step("reboot into the new firmware", False, "not every device confirmed it")
        self.tampered(factory_dir, op)
        self.rotation(op, uids)

    def tampered(self, factory_dir: Path, op: Operator) -> None:
        n = len(self.apps)
        name, version, counter = TAMPERED
        signed = factory.sign_firmware(
            factory_dir,
            secrets.token_bytes(self.firmware_size),
            name=name,
            version=version,
            security_counter=counter,
            raw=True,
        )
        altered = bytearray(signed.image)
        altered[len(altered) // 3] ^= 0x5A
        op.publish_firmware(name, bytes(altered), signed.signature)
        op.assign(GROUP, name)
        self.report.tampered_method = TAMPERED_METHOD
        result = self.phase("tampered image", self.apps, lambda app: app.update_firmware())
        outcomes = [r for r in result.results if isinstance(r, FirmwareOutcome)]
        self.report.tampered_invalid = sum(1 for o in outcomes if not o.verdict.valid)
        self.report.tampered_applied = sum(1 for o in outcomes if o.applied)
        rollout = op.rollout(GROUP)
        op.assign(GROUP, GOOD[0])  # the operator withdraws it
        reasons = sorted({o.verdict.reason for o in outcomes if not o.verdict.valid})
        self.phase_step(
            result,
            "tampered image refused",
            f"{self.report.tampered_invalid} of {n} SEs said INVALID ({', '.join(reasons)}), "
            f"{self.report.tampered_applied} applied; fleet counted {rollout.get('invalid')} "
            f"invalid reports; release withdrawn",
        )
        if self.report.tampered_invalid != n or self.report.tampered_applied:
            self.step("tampered image refused", False, "a device did not refuse it")

    def rotation(self, op: Operator, uids: list[str]) -> None:
        n = len(self.apps)
        scheduled = op.schedule_rotation(factory.BATCH)
        self.step(
            "rotation scheduled",
            scheduled.get("scheduled") == n,
            f"operator scheduled {scheduled.get('scheduled')} devices of batch {factory.BATCH!r}",
        )
        result = self.phase("rotation", self.apps, lambda app: app.rotate_if_due())
        self.report.rates["rotations/s"] = _rate(result)
        epochs = {d["uid"]: int(d["key_epoch"]) for d in op.devices()}
        self.report.epochs_after = {uid: epochs.get(uid, 0) for uid in uids}
        before = self.report.epochs_before
        self.report.rotated = sum(1 for u in uids if epochs.get(u, 0) == before.get(u, -1) + 1)
        self.phase_step(
            result,
            "key rotation",
            f"{self.report.rotated} of {n} devices: new key made in the SE, proof of continuity "
            f"signed by the old one, fleet acknowledged, epoch {min(before.values())} -> "
            f"{min(epochs.get(u, 0) for u in uids)}",
        )
        if self.report.rotated != n:
            self.step("key rotation", False, f"only {self.report.rotated} of {n} moved up")

    def revocation(
        self,
        batch: factory.Batch,
        fleet: phases.Fleetside,
        op: Operator,
        issuer: x509.Certificate,
    ) -> None:
        missing = len(self.apps) - 1
        uid = batch.uids[missing]
        self.apps[missing].close()  # reported missing: it stops cycling
        others = self.apps[:missing]
        revocation = phases.measure_revocation(
            uid,
            batch.card_dirs[missing],
            self.base / "devices" / f"{missing:06d}",
            fleet,
            op,
            issuer,
        )
        self.report.revocation = revocation
        latency = revocation.latency_seconds
        ok = (
            latency is not None
            and revocation.new_connection_refused
            and revocation.ocsp_status == "revoked"
            and revocation.crl_lists_serial
            and phases.revoked(revocation.app_status)
        )
        shown = "never" if latency is None else f"{latency * 1000:.0f} ms"
        self.step(
            "device reported missing and revoked",
            ok,
            f"{uid}: live connection cut {shown} after the revoke call returned; new connection "
            f"refused: {revocation.new_connection_refused}; OCSP {revocation.ocsp_status}; CRL "
            f"lists it: {revocation.crl_lists_serial}; device app {revocation.app_status}",
        )
        if others:

            def telemetry(app: DeviceApp) -> str:
                return app.send_telemetry({"reading": "temperature", "celsius": 21.7, "seq": 2})

            result = self.phase("telemetry after rotation", others, telemetry)
            self.phase_step(
                result,
                "the rest of the fleet carries on",
                f"{result.ok} devices sent telemetry with their rotated credentials",
            )

    def audit(self, auditor: Operator, factory_dir: Path, uid: str) -> None:
        verdict = auditor.audit_verify()
        self.report.audit_ok = bool(verdict.get("ok"))
        self.report.audit_entries = int(verdict.get("head_seq") or 0)
        self.report.audit_head = verdict.get("head_hash")
        self.step(
            "audit log verified",
            self.report.audit_ok,
            f"hash chain intact over {self.report.audit_entries} entries (auditor token)"
            if self.report.audit_ok
            else f"broken at entry {verdict.get('seq')}: {verdict.get('reason')}",
        )
        chain = trace_chain(auditor.trace(uid), factory_dir)
        self.report.trace = chain
        self.step(
            "trace to the ceremony record",
            chain.complete,
            f"{uid}: {len(chain.links)} links, certificate -> attestation -> batch CA -> root -> "
            f"ceremony entry {chain.ceremony_entry_seq} ({chain.ceremony_action}), quorum "
            f"{chain.quorum}, present {', '.join(chain.custodians_present)}",
        )

    def shutdown(self) -> None:
        for app in self.apps:
            with contextlib.suppress(Exception):  # best effort: the report says what failed
                app.close()
        if self.fleet is not None:
            self.fleet.stop()


def _rate(result: PhaseResult) -> float:
    return round(result.ok / result.wall_seconds, 2) if result.wall_seconds > 0 else 0.0


def run_demo(
    state_dir: Path,
    *,
    devices: int = 10,
    on_event: Callable[[DemoEvent], None] = lambda _event: None,
    workers: int = 8,
    firmware_size: int = 8 * 1024,
) -> DemoReport:
    """Run the whole walk in ``state_dir`` (must be empty or new); see the module docstring."""
    if devices < 2:
        raise ValueError("the demo needs at least 2 devices (one is reported missing)")
    report = DemoReport(devices=devices, directory=str(state_dir))
    walk = _Walk(state_dir, report, on_event, workers, firmware_size)
    started = time.perf_counter()
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        walk.run()
    except _StepFailedError:
        pass
    except Exception as exc:  # a demo reports any failure as a failed step
        step = Step("unexpected error", False, f"{type(exc).__name__}: {exc}")
        report.steps.append(step)
        on_event(DemoEvent(EventKind.STEP, step.name, ok=False, detail=step.detail))
    finally:
        walk.shutdown()
    report.wall_seconds = round(time.perf_counter() - started, 3)
    return report
