"""One device's chain of evidence for the demo's report, from the fleet's trace to the ceremony.

Scope: :func:`trace_chain` turns the operator API's ``GET /v1/devices/{uid}/trace`` answer into
a :class:`~iotid.demo.report.TraceChain` (one link per certificate, per enrollment's attestation
chain, the batch CA, the issuance root) and closes it with the ceremony record. The fleet is
configured with the factory's record (``fleet.json``), so its trace verifies the last link
itself (``complete``); the operator also checks the factory's ``ceremony.jsonl`` against the same
root with the same rule (:func:`iotid.fleet.audit.trace.ceremony_link`: the record's hash chain,
the entry the root names, the root key and certificate it recorded, the quorum present), and the
two must agree on the entry. The root the trace walked must be that ceremony's root.

Not in scope: walking the chain (the fleet), rendering (the CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iotid.demo.report import TraceChain, TraceLink
from iotid.factory import ceremony
from iotid.fleet.audit.trace import ceremony_link
from iotid.spec.manifest import certificate_sha256

__all__ = ["trace_chain"]


def _problem(item: dict[str, Any]) -> str:
    problem = item.get("problem")
    return f"; {problem}" if problem else ""


def trace_chain(trace: dict[str, Any], factory_dir: Path) -> TraceChain:
    links: list[TraceLink] = []
    for cert in trace.get("certificates", []):
        state = f"revoked ({cert.get('reason')})" if cert.get("revoked_at") else "valid"
        links.append(
            TraceLink(
                f"certificate {str(cert.get('serial'))[:16]}",
                bool(cert.get("ok")),
                f"epoch {cert.get('key_epoch')}, {state}, until {cert.get('not_after')}"
                + _problem(cert),
            )
        )
    for enrollment in trace.get("enrollments", []):
        links.append(
            TraceLink(
                "attestation certificate",
                bool(enrollment.get("ok")),
                f"{enrollment.get('attestation_subject')} sha256 "
                f"{str(enrollment.get('attestation_sha256'))[:16]} (epoch "
                f"{enrollment.get('key_epoch')} enrollment)" + _problem(enrollment),
            )
        )
    batch = trace.get("batch", {})
    links.append(
        TraceLink(
            f"batch CA ({batch.get('name')})",
            bool(batch.get("ok")),
            f"{batch.get('batch_ca_subject')} sha256 {str(batch.get('batch_ca_sha256'))[:16]}"
            + _problem(batch),
        )
    )
    root = trace.get("root", {})
    root_cert = ceremony.root_certificate(factory_dir)
    same_root = root.get("sha256") == certificate_sha256(root_cert)
    links.append(
        TraceLink(
            "issuance root",
            bool(root.get("ok")) and same_root,
            f"{root.get('subject')} sha256 {str(root.get('sha256'))[:16]}, names record entry "
            f"{str(root.get('ceremony_reference'))[:16]}"
            + ("" if same_root else "; not this ceremony's root")
            + _problem(root),
        )
    )
    record = (factory_dir / ceremony.RECORD_FILE).read_bytes()
    link = ceremony_link(root_cert, record)
    quorum = None if link.threshold is None else f"{link.threshold}-of-{link.count}"
    fleet_view = trace.get("ceremony", {})
    agree = bool(fleet_view.get("verified")) and fleet_view.get("entry_seq") == link.entry_seq
    links.append(
        TraceLink(
            "ceremony record",
            link.ok and link.verified and agree,
            f"entry {link.entry_seq} ({link.entry_action}, {link.entry_time}) of "
            f"{link.entries}; quorum {quorum}, present: {', '.join(link.custodians_present)}"
            + (f"; {link.problem}" if link.problem else "")
            + ("" if agree else "; the fleet's trace did not verify the same entry"),
        )
    )
    return TraceChain(
        uid=str(trace.get("uid")),
        state=str(trace.get("state")),
        key_epoch=int(trace.get("key_epoch") or 0),
        links=links,
        complete=bool(trace.get("complete")) and all(x.ok for x in links),
        ceremony_entry_seq=link.entry_seq,
        ceremony_action=link.entry_action,
        quorum=quorum,
        custodians_present=list(link.custodians_present),
    )
