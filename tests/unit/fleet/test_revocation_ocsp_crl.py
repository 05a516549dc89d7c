"""OCSP (RFC 6960) and CRLs (RFC 5280) of the issuing CA, and the revocation HTTP API, on SQLite
and PostgreSQL: statuses straight from the registry, CertIDs in SHA-1 and SHA-256, nonces,
signatures, malformed and foreign requests, GET encodings, CRL contents and numbering, roles."""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from fastapi import FastAPI
from fastapi.testclient import TestClient

from iotid.fleet.app import _render_domain_error
from iotid.fleet.auth import DB_STATE_KEY, NewToken, Role, create_token
from iotid.fleet.db import Database
from iotid.fleet.errors import DomainError
from iotid.fleet.issuing import FleetKeys
from iotid.fleet.revocation import CrlPublisher, OcspResponder, RevocationService
from iotid.fleet.revocation.api import decode_get_request, install
from support.manifests import Manifests
from support.revocation import ACTOR, Seeded, make_fleet_keys, seed_batch

HOUR = dt.timedelta(hours=1)
S = ocsp.OCSPCertStatus


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory, manifests: Manifests) -> FleetKeys:
    return make_fleet_keys(tmp_path_factory.mktemp("keys") / "fleet", manifests)


def _request(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
    nonce: bytes | None = None,
) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())  # noqa: S303
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _verified(der: bytes, keys: FleetKeys) -> ocsp.OCSPResponse:
    response = ocsp.load_der_ocsp_response(der)
    assert response.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
    public = keys.issuing.public_key()
    public.verify(
        response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm)
    )
    assert response.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(public).digest
    return response


@pytest.fixture
def world(fleet_db: Database, manifests: Manifests, keys: FleetKeys) -> Seeded:
    seeded = seed_batch(fleet_db, manifests, keys, "b1", 0x100, 3)
    RevocationService(fleet_db, keys).revoke_device(seeded.uids[0], "key_compromise", actor=ACTOR)
    return seeded


# -- OCSP -------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", [hashes.SHA1(), hashes.SHA256()], ids=["sha1", "sha256"])  # noqa: S303
def test_ocsp_good_revoked_unknown(
    fleet_db: Database, keys: FleetKeys, world: Seeded, algorithm: hashes.HashAlgorithm
) -> None:
    responder = OcspResponder(fleet_db, keys)
    ca = keys.issuing.certificate
    revoked_cert = world.certs[world.uids[0]][0]
    good_cert = world.certs[world.uids[1]][0]
    revoked = _verified(responder.respond(_request(revoked_cert, ca, algorithm)), keys)
    assert revoked.certificate_status is S.REVOKED
    assert revoked.revocation_reason is x509.ReasonFlags.key_compromise
    assert revoked.revocation_time_utc is not None
    assert revoked.serial_number == revoked_cert.serial_number
    assert revoked.hash_algorithm.name == algorithm.name
    good = _verified(responder.respond(_request(good_cert, ca, algorithm)), keys)
    assert good.certificate_status is S.GOOD
    assert good.next_update_utc is not None and good.next_update_utc > good.this_update_utc
    stranger = keys.issuing.issue_client(
        world.certs[world.uids[2]][0]
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        world.uids[2],
        now=dt.datetime.now(dt.UTC),
    )  # issued but never recorded
    unknown = _verified(responder.respond(_request(stranger, ca, algorithm)), keys)
    assert unknown.certificate_status is S.UNKNOWN


def test_ocsp_answers_at_once_after_a_revocation(
    fleet_db: Database, keys: FleetKeys, world: Seeded
) -> None:
    responder = OcspResponder(fleet_db, keys)
    cert = world.certs[world.uids[1]][0]
    request = _request(cert, keys.issuing.certificate)
    assert _verified(responder.respond(request), keys).certificate_status is S.GOOD
    RevocationService(fleet_db, keys).revoke_device(world.uids[1], "unspecified", actor=ACTOR)
    after = _verified(responder.respond(request), keys)
    assert after.certificate_status is S.REVOKED
    assert after.revocation_reason is None  # unspecified is omitted (RFC 5280 §5.3.1)


def test_ocsp_nonce_is_echoed(fleet_db: Database, keys: FleetKeys, world: Seeded) -> None:
    responder = OcspResponder(fleet_db, keys)
    cert = world.certs[world.uids[1]][0]
    nonce = b"\x01" * 16
    response = _verified(
        responder.respond(_request(cert, keys.issuing.certificate, nonce=nonce)), keys
    )
    assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    plain = _verified(responder.respond(_request(cert, keys.issuing.certificate)), keys)
    assert len(plain.extensions) == 0


@pytest.mark.parametrize("body", [b"", b"\x30\x03\x02\x01\x01", b"not der at all", b"\x30" * 20000])
def test_malformed_requests_get_malformed_request(
    fleet_db: Database, keys: FleetKeys, body: bytes
) -> None:
    response = ocsp.load_der_ocsp_response(OcspResponder(fleet_db, keys).respond(body))
    assert response.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_foreign_issuer_is_unauthorized(
    fleet_db: Database, keys: FleetKeys, manifests: Manifests, world: Seeded
) -> None:
    cert = world.certs[world.uids[1]][0]
    response = ocsp.load_der_ocsp_response(
        OcspResponder(fleet_db, keys).respond(_request(cert, manifests.ca))
    )
    assert response.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED


def test_get_encodings_decode() -> None:
    der = bytes(range(256))
    standard = base64.b64encode(der).decode()
    assert "+" in standard and "/" in standard
    assert decode_get_request(urllib.parse.quote(standard, safe="")) == der
    assert decode_get_request(standard) == der
    assert decode_get_request(base64.urlsafe_b64encode(der).decode().rstrip("=")) == der
    assert decode_get_request("!!!") is None
    assert decode_get_request("") is None


# -- CRL --------------------------------------------------------------------------------------
def _crl(der: bytes, keys: FleetKeys) -> x509.CertificateRevocationList:
    crl = x509.load_der_x509_crl(der)
    assert crl.is_signature_valid(keys.issuing.public_key())
    assert crl.issuer == keys.issuing.certificate.subject
    return crl


def test_issuing_crl_lists_revoked_certificates(
    fleet_db: Database, keys: FleetKeys, world: Seeded
) -> None:
    publisher = CrlPublisher(fleet_db, keys)
    crl = _crl(publisher.issuing_crl(), keys)
    revoked_serial = world.certs[world.uids[0]][0].serial_number
    assert [r.serial_number for r in crl] == [revoked_serial]
    entry = crl.get_revoked_certificate_by_serial_number(revoked_serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
        x509.ReasonFlags.key_compromise
    )
    assert crl.next_update_utc is not None
    assert crl.next_update_utc - crl.last_update_utc == dt.timedelta(minutes=5)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert publisher.issuing_crl() == publisher.issuing_crl()  # cached while nothing changed
    RevocationService(fleet_db, keys).revoke_batch("b1", "ca_compromise", actor=ACTOR)
    after = _crl(publisher.issuing_crl(), keys)
    assert {r.serial_number for r in after} == {
        c.serial_number for u in world.uids for c in world.certs[u]
    }
    assert after.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number > number
    assert publisher.root_crl() is None  # these keys have no root CRL


def test_expired_certificates_leave_the_crl(
    fleet_db: Database, keys: FleetKeys, world: Seeded
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)
    crl = _crl(CrlPublisher(fleet_db, keys, clock=lambda: later).issuing_crl(), keys)
    assert len(crl) == 0


# -- HTTP API ---------------------------------------------------------------------------------
@dataclass
class Api:
    client: TestClient
    tokens: dict[Role, NewToken]

    def auth(self, role: Role) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role].secret}"}


@pytest.fixture
def api(fleet_db: Database, keys: FleetKeys) -> Iterator[Api]:
    app = FastAPI()
    setattr(app.state, DB_STATE_KEY, fleet_db)
    app.add_exception_handler(DomainError, _render_domain_error)
    install(app, fleet_db, keys)
    tokens = {role: create_token(fleet_db, role, HOUR) for role in Role}
    with TestClient(app) as client:
        yield Api(client, tokens)


def test_revoke_endpoints_need_a_writer(api: Api, world: Seeded) -> None:
    path = f"/v1/devices/{world.uids[1]}/revoke"
    body = {"reason": "key_compromise"}
    assert api.client.post(path, json=body).status_code == 401
    assert api.client.post(path, json={"reason": "nope"}).status_code == 401  # 401 before 422
    assert api.client.post(path, json=body, headers=api.auth(Role.AUDITOR)).status_code == 403
    assert api.client.post("/v1/batches/b1/revoke", json=body).status_code == 401
    response = api.client.post(path, json=body, headers=api.auth(Role.OPERATOR))
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["created"] is True and out["certificates"] == 1 and out["event_id"] >= 1
    again = api.client.post(path, json=body, headers=api.auth(Role.ADMIN)).json()
    assert again["created"] is False and again["event_id"] == out["event_id"]
    bad = api.client.post(path, json={"reason": "ca_compromise"}, headers=api.auth(Role.ADMIN))
    assert bad.status_code == 422 and bad.json()["error"] == "revocation.bad_reason"
    missing = api.client.post(
        "/v1/devices/00AA00AA/revoke", json=body, headers=api.auth(Role.ADMIN)
    )
    assert missing.status_code == 404 and missing.json()["error"] == "device.not_found"
    batch = api.client.post(
        "/v1/batches/b1/revoke", json={"reason": "ca_compromise"}, headers=api.auth(Role.ADMIN)
    )
    assert batch.status_code == 200
    assert (batch.json()["devices"], batch.json()["certificates"]) == (1, 1)


def test_ocsp_and_crl_over_http(api: Api, keys: FleetKeys, world: Seeded) -> None:
    ca = keys.issuing.certificate
    request = _request(world.certs[world.uids[0]][0], ca, nonce=b"n" * 8)
    posted = api.client.post(
        "/ocsp", content=request, headers={"Content-Type": "application/ocsp-request"}
    )
    assert posted.status_code == 200
    assert posted.headers["content-type"] == "application/ocsp-response"
    assert _verified(posted.content, keys).certificate_status is S.REVOKED
    encoded = urllib.parse.quote(base64.b64encode(request).decode(), safe="")
    got = api.client.get(f"/ocsp/{encoded}")
    assert _verified(got.content, keys).certificate_status is S.REVOKED
    url_safe = base64.urlsafe_b64encode(_request(world.certs[world.uids[1]][0], ca)).decode()
    assert _verified(api.client.get(f"/ocsp/{url_safe}").content, keys).certificate_status is S.GOOD
    junk = api.client.post("/ocsp", content=b"junk")
    assert junk.status_code == 200
    assert ocsp.load_der_ocsp_response(junk.content).response_status is (
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    )
    junk_get = api.client.get("/ocsp/%%%")
    assert junk_get.status_code == 200
    crl = api.client.get("/crl/issuing.crl")
    assert crl.status_code == 200 and crl.headers["content-type"] == "application/pkix-crl"
    assert len(_crl(crl.content, keys)) == 1
    assert api.client.get("/crl/root.crl").status_code == 404


def test_openapi_describes_the_ocsp_bodies_as_binary(api: Api) -> None:
    operation = api.client.get("/openapi.json").json()["paths"]["/ocsp"]["post"]
    binary = {"type": "string", "format": "binary"}
    assert operation["requestBody"]["content"]["application/ocsp-request"]["schema"] == binary
    answer = operation["responses"]["200"]["content"]["application/ocsp-response"]["schema"]
    assert answer == binary
