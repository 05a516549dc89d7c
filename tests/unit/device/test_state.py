"""The device's non-secret state (atomic JSON + gateway CA bundle) and the telemetry signature
rule's choice of hash and scheme per key type."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from iotid.device.gateway import signature_scheme
from iotid.device.state import DeviceState
from support.pki import ca


def test_state_round_trip(tmp_path: Path) -> None:
    state = DeviceState(tmp_path / "dev")
    assert state.gateway is None and not state.revoked and state.rotation is None
    state.update(gateway="127.0.0.1:8443", revoked=True, rotation={"epoch": 2})
    again = DeviceState(tmp_path / "dev")
    assert again.gateway == "127.0.0.1:8443" and again.revoked
    assert again.rotation == {"epoch": 2}
    again.update(revoked=None, rotation=None)
    assert DeviceState(tmp_path / "dev").as_dict() == {"gateway": "127.0.0.1:8443"}
    assert not list((tmp_path / "dev").glob("*.tmp"))


def test_gateway_ca_bundle(tmp_path: Path) -> None:
    root = ca("bundle test CA").cert
    pem = root.public_bytes(Encoding.PEM)
    state = DeviceState(tmp_path)
    assert state.gateway_ca() is None
    state.save_gateway_ca(pem)
    assert DeviceState(tmp_path).gateway_ca() == [root]
    with pytest.raises(ValueError):
        state.save_gateway_ca(b"not pem")


def test_memory_only_state() -> None:
    state = DeviceState(None)
    state.update(uid="AB")
    state.save_gateway_ca(ca("mem CA").cert.public_bytes(Encoding.PEM))
    assert state.get("uid") == "AB" and state.gateway_ca() is not None
    assert "memory" in repr(state)


def test_signature_scheme_per_key() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    rsa_key = rsa.generate_private_key(65537, 2048).public_key()
    assert signature_scheme(p256) == ("sha256", "ecdsa")
    assert signature_scheme(p384) == ("sha384", "ecdsa")
    assert signature_scheme(rsa_key) == ("sha256", "pss")
