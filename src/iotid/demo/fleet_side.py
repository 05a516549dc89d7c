"""The demo's fleet: one fleet process in a background thread, and the operator's HTTP calls.

Scope: :func:`free_port` (a localhost port the kernel hands out), :func:`start_fleet`
(``FleetRuntime(config).run_in_thread()`` on the demo's SQLite database and ports),
:func:`operator_tokens` (an operator and an auditor API token, made as ``iotid fleet token
create`` makes them; their secrets stay in memory) and :class:`Operator`, a small JSON client of
the real operator API over ``urllib`` (batch import, firmware publish and group assignment,
rollout progress, rotation schedule, revocation, device list, audit verify, device trace, OCSP
and CRL). Every non-2xx answer becomes :class:`OperatorError` carrying the status and the
fleet's error code, never a traceback of the server.

Not in scope: the fleet's rules (``iotid.fleet``), the factory (``factory_side``), devices.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from iotid.fleet.auth import Role, create_token
from iotid.fleet.config import FleetConfig
from iotid.fleet.runtime import FleetRuntime, RunningFleet

__all__ = ["Operator", "OperatorError", "free_port", "operator_tokens", "start_fleet"]

_TIMEOUT = 60.0


class OperatorError(Exception):
    """The operator API answered an error (or could not be reached)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code


def free_port() -> int:
    """A free localhost TCP port (bound and released: the fleet binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_fleet(config: FleetConfig) -> RunningFleet:
    """The fleet (API, gateway, revocation follower) serving in a background thread."""
    return FleetRuntime(config).run_in_thread()


@dataclass(frozen=True)
class Tokens:
    operator: str
    auditor: str

    def __repr__(self) -> str:
        return "Tokens(operator=***, auditor=***)"


def operator_tokens(fleet: RunningFleet) -> Tokens:
    db = fleet.runtime.db
    day = dt.timedelta(days=1)
    return Tokens(
        create_token(db, Role.OPERATOR, day).secret, create_token(db, Role.AUDITOR, day).secret
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class Operator:
    """The operator's calls to the fleet API (``base_url``) with a bearer token."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token

    def __repr__(self) -> str:
        return f"Operator({self.base_url!r})"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        auth: bool = True,
    ) -> Any:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = content_type
        if auth:
            headers["Authorization"] = f"Bearer {self._token}"
        request = urllib.request.Request(  # noqa: S310 (the demo's own localhost fleet)
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:  # noqa: S310
                payload = response.read()
                kind = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise _error(exc.code, exc.read()) from None
        except (urllib.error.URLError, OSError) as exc:
            raise OperatorError(0, "unreachable", str(getattr(exc, "reason", exc))) from None
        if kind.startswith("application/json"):
            return json.loads(payload)
        return payload

    # -- the operator's calls --------------------------------------------------------------------
    def import_batch(self, manifest: bytes, signature: bytes) -> dict[str, Any]:
        body = {"manifest": _b64(manifest), "signature": _b64(signature)}
        result: dict[str, Any] = self.request("POST", "/v1/batches", body)
        return result

    def publish_firmware(self, name: str, image: bytes, signature: bytes | None) -> dict[str, Any]:
        body = {
            "name": name,
            "image": _b64(image),
            "signature": None if signature is None else _b64(signature),
        }
        result: dict[str, Any] = self.request("POST", "/v1/firmware", body)
        return result

    def assign(self, group: str, release: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "PUT", f"/v1/firmware/groups/{group}", {"release": release}
        )
        return result

    def rollout(self, group: str) -> dict[str, Any]:
        groups = self.request("GET", "/v1/firmware/rollout")["groups"]
        return next((g for g in groups if g["group"] == group), {})

    def schedule_rotation(self, batch: str) -> dict[str, Any]:
        body = {"uids": None, "group": None, "batch": batch}
        result: dict[str, Any] = self.request("POST", "/v1/rotation/schedule", body)
        return result

    def revoke(self, uid: str, reason: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request(
            "POST", f"/v1/devices/{uid}/revoke", {"reason": reason}
        )
        return result

    def devices(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = "?limit=1000" + ("" if cursor is None else f"&cursor={cursor}")
            page = self.request("GET", f"/v1/devices{query}")
            out.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor:
                return out

    def audit_verify(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", "/v1/audit/verify")
        return result

    def trace(self, uid: str) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"/v1/devices/{uid}/trace")
        return result

    def ocsp_status(self, cert: x509.Certificate, issuer: x509.Certificate) -> str:
        """The OCSP responder's answer for ``cert`` (RFC 6960 over POST, no token)."""
        der = (
            ocsp.OCSPRequestBuilder()
            .add_certificate(cert, issuer, hashes.SHA256())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        answer = self.request(
            "POST", "/ocsp", raw=der, content_type="application/ocsp-request", auth=False
        )
        response = ocsp.load_der_ocsp_response(answer)
        if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            return response.response_status.name.lower()
        return response.certificate_status.name.lower()

    def crl_lists(self, serial: int) -> bool:
        """The fleet's current issuing-CA CRL lists ``serial``."""
        crl = x509.load_der_x509_crl(self.request("GET", "/crl/issuing.crl", auth=False))
        return crl.get_revoked_certificate_by_serial_number(serial) is not None


def _error(status: int, payload: bytes) -> OperatorError:
    code, message = "http_error", payload[:200].decode("utf-8", "replace")
    try:
        doc = json.loads(payload)
    except ValueError:
        return OperatorError(status, code, message)
    if isinstance(doc, dict):
        code = str(doc.get("error", code))
        message = str(doc.get("message", doc.get("detail", message)))
    return OperatorError(status, code, message)
