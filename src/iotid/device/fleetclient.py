"""The device's fleet client: enrollment over the operator API, then the gateway session.

Scope: :class:`FleetClient` (``enroll()``: nonce -> quote from the SE -> certificate installed on
the card; ``gateway()``: a :class:`~iotid.device.gateway.GatewaySession` over mutual TLS with the
card's chain and key), :class:`EnrollmentInfo`, and :func:`install_issued`, which turns the
fleet's certificate answer (enrollment, renewal, rotation share its shape) into the card's chain.
Non-secret state (gateway CA bundle, gateway address, journal) lives in a
:class:`~iotid.device.state.DeviceState` directory; keys never leave the SE.

Not in scope: HTTP mechanics and retries (:mod:`iotid.device.http`), the gateway endpoints
(:mod:`iotid.device.gateway`), the card commands (the host shim), choosing the SE (the caller:
``iotid.connect`` for the CLI).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from iotid.device.errors import DeviceRevoked, DeviceStateError
from iotid.device.gateway import GatewaySession
from iotid.device.http import (
    JsonChannel,
    RetryPolicy,
    mtls_connector,
    parse_address,
    plain_connector,
)
from iotid.device.issued import EnrollmentInfo, b64, install_issued, unb64
from iotid.device.state import DeviceState
from iotid.host.mtls import NoCredentialError
from iotid.host.secureelement import SecureElement
from iotid.host.tls import DigestSigner

__all__ = ["EnrollmentInfo", "FleetClient"]


class FleetClient:
    """One device's client of the fleet.

    ``api_url``: the operator API base (``http://host:port`` or ``https://...``; ``ca_pem``
    validates HTTPS, and seeds the gateway CA bundle until enrollment provides one).
    ``gateway``: ``host:port`` of the device gateway (remembered in ``state_dir``).
    """

    def __init__(
        self,
        se: SecureElement,
        api_url: str,
        *,
        gateway: str | None = None,
        ca_pem: bytes | None = None,
        state_dir: Path | str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.se = se
        self.api_url = api_url
        self.state = DeviceState(state_dir)
        self._ca_pem = ca_pem
        self._retry = retry
        self._timeout = timeout
        self._sleep = sleep
        if gateway is not None:
            parse_address(gateway)  # ValueError now rather than at the first call
            if self.state.gateway != gateway:
                self.state.update(gateway=gateway)
        connector, prefix = plain_connector(api_url, ca_pem=ca_pem, timeout=timeout)
        self.api = JsonChannel(connector, prefix=prefix, retry=retry, sleep=sleep, name="fleet API")

    def __repr__(self) -> str:
        return f"FleetClient({self.api_url!r}, gateway={self.state.gateway!r})"

    def close(self) -> None:
        self.api.close()

    def __enter__(self) -> FleetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- enrollment ------------------------------------------------------------------------------
    def enroll(self) -> EnrollmentInfo:
        """Nonce -> quote (SE) -> certificate; installs cert + issuing CA on the card and keeps
        the gateway CA bundle. Raises FleetRefused (with the verifier's ``reason``) on refusal."""
        try:
            answer = self.api.post("/v1/enrollment/nonce", idempotent=True)
            nonce = unb64(answer.get("nonce"), "nonce")
            quote = self.se.attestation.attest(nonce)
            # Not retried: the nonce is single-use, a retry would be refused as nonce_reused.
            issued = self.api.post("/v1/enrollment", {"quote": b64(quote)})
        finally:
            # Enrollment is rare: no idle keep-alive connection to the API afterwards (a
            # thousand devices in one process would otherwise hold a thousand sockets).
            self.api.close()
        info = install_issued(self.se, issued)
        gateway_ca = issued.get("gateway_ca")
        if isinstance(gateway_ca, str):
            self.state.save_gateway_ca(gateway_ca.encode())
        self.state.update(
            uid=info.uid,
            epoch=info.epoch,
            serial=info.serial,
            not_after=info.not_after,
            revoked=None,
            rotation=None,
        )
        return info

    # -- the gateway -----------------------------------------------------------------------------
    def gateway(self, *, server_name: str | None = None) -> GatewaySession:
        """A session with the device gateway (mutual TLS with the card's chain and key)."""
        if self.state.revoked:
            raise DeviceRevoked("this device was refused as revoked; not calling the gateway")
        address = self.state.gateway
        if address is None:
            raise DeviceStateError("no gateway address (pass gateway='host:port')")
        ca = self.state.gateway_ca()
        if ca is None and self._ca_pem is not None:
            ca = x509.load_pem_x509_certificates(self._ca_pem)
        if not ca:
            raise DeviceStateError("no gateway CA bundle: enroll first")
        host, port = parse_address(address)
        connector = mtls_connector(
            host, port, self._credential, ca, server_name=server_name, timeout=self._timeout
        )
        channel = JsonChannel(
            connector, retry=self._retry, sleep=self._sleep, name="gateway", mtls=True
        )
        return GatewaySession(self.se, channel, self.state)

    def _credential(self) -> tuple[DigestSigner, list[x509.Certificate]]:
        session = self.se.mtls
        try:
            chain = session.chain()
        except NoCredentialError:
            raise DeviceStateError("no certificate on the card: enroll first") from None
        if not chain:
            raise DeviceStateError("no certificate on the card: enroll first")
        return session, chain
