"""Firmware verification over T=1 on a faulty I2C bus: a tampered image is never reported VALID.

The card sits behind the T=1 endpoint of the simulated bus (iotid.transport.t1) with 1%, 5% and
20% of the frames damaged, dropped, truncated or delayed; the host verifies through
SecureElement.verify_firmware (bootloader API). Every answer must be right or fail safe: a
genuine image is VALID or INVALID with an "error" reason (never a verdict about its contents),
a tampered image is never VALID.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from iotid.crypto.firmware_raw import sign_raw_image
from iotid.host.firmware import perso_dgis
from iotid.host.secureelement import SecureElement
from iotid.host.securitydomain import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.firmware import FirmwareApplet
from iotid.spec.firmware import HashAlg, ImageVersion, RawSignature
from iotid.spec.identity import FIRMWARE_AID
from iotid.transport.i2c import FaultConfig
from iotid.transport.loopback import LoopbackConnection
from iotid.transport.t1 import open_t1
from iotid.transport.t1_blocks import Edc, T1Params

pytestmark = pytest.mark.slow
VERSION = ImageVersion(2, 0, 0)


@pytest.fixture(scope="module")
def signed(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[ec.EllipticCurvePrivateKey, Path, Path, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    image = secrets.token_bytes(6000)
    sig = RawSignature(
        HashAlg.SHA256, VERSION, 4, sign_raw_image(key, image, version=VERSION, security_counter=4)
    ).encode()
    d = tmp_path_factory.mktemp("fw")
    good, bad = d / "good.bin", d / "bad.bin"
    good.write_bytes(image)
    bad.write_bytes(image[:3000] + bytes([image[3000] ^ 0x40]) + image[3001:])
    return key, good, bad, sig


def _card(key: ec.EllipticCurvePrivateKey) -> Card:
    card = Card.create(None, uid=secrets.token_bytes(10), applets=[FirmwareApplet])
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(FIRMWARE_AID)
    sd.store_data(perso_dgis([key.public_key()], 0))
    return card


@pytest.mark.parametrize("rate", [0.01, 0.05, 0.20])
@pytest.mark.parametrize("edc", [Edc.CRC, Edc.LRC])
def test_tampered_image_is_never_valid(
    signed: tuple[ec.EllipticCurvePrivateKey, Path, Path, bytes], rate: float, edc: Edc
) -> None:
    key, good, bad, sig = signed
    outcomes = {"valid": 0, "error": 0}
    for seed in range(6):
        card = _card(key)
        params = T1Params(edc=edc, ifsc=254)
        conn = open_t1(card, faults=FaultConfig.uniform(rate), seed=seed, params=params)
        se = SecureElement(conn, extended=False)
        tampered = se.verify_firmware(bad, signature=sig)
        assert not tampered.valid, f"seed {seed}: a tampered image was reported VALID"
        genuine = se.verify_firmware(good, signature=sig)
        if genuine.valid:
            outcomes["valid"] += 1
            assert genuine.security_counter == 4
        else:
            # Fail-safe: a bus error, never a claim about a genuine image's contents; with
            # LRC a multi-bit flip can slip through and corrupt a chunk, which the card then
            # sees as a hash mismatch: still INVALID, the safe direction.
            assert genuine.reason.startswith("error") or edc is Edc.LRC, genuine.reason
            outcomes["error"] += 1
    if rate <= 0.01:
        assert outcomes["valid"] >= 4, outcomes
