"""The signed-firmware applet through its host session: personalisation, BEGIN / UPDATE / FINISH
in MCUboot and raw mode, CONFIRM, GET STATE, the transient session, the bound on buffered image
bytes, the negative matrix (each refusal: a precise status word and no NVM change) and the host's
fail-safe answers.

Not covered here: imgtool-signed images and every rejection reason end to end
(tests/integration/test_firmware_imgtool.py), kill -9 during CONFIRM
(tests/integration/test_firmware_tearing.py), the verifier's own rules
(tests/unit/crypto/test_mcuboot.py).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from iotid.apdu import ApduError, tlv
from iotid.crypto.firmware_raw import sign_raw_image
from iotid.crypto.mcuboot import ImageVersion, TrustedKey
from iotid.host import SecurityDomainSession, SmartCardProtocol
from iotid.host.errors import BadResponseError
from iotid.host.firmware import (
    ConfirmRefusedError,
    FirmwareSession,
    FirmwareStateError,
    Verdict,
    confirm,
    parse_verdict,
    perso_dgis,
    verify_image,
)
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applets.firmware import FirmwareApplet
from iotid.spec import firmware as spec
from iotid.spec.firmware import Dgi, HashAlg, Ins, Mode, RawSignature, Reason, Tag, TlvType
from iotid.spec.identity import APP_PERSONALISED, CLA_IOTID, SHARED_FIRMWARE_FLOOR_RECORD
from iotid.spec.iso7816 import SW
from iotid.transport.base import TransportError
from iotid.transport.loopback import LoopbackConnection

UID = bytes.fromhex("0A0B0C0D0E0F10111213")
ISSUER = ec.derive_private_key(0xF1F2F3, ec.SECP256R1())
ISSUER_384 = ec.derive_private_key(0xA1A2A3, ec.SECP384R1())
INTRUDER = ec.derive_private_key(0x666, ec.SECP256R1())
V2 = ImageVersion(2, 0, 0)

Snapshot = dict[str, bytes | None]


def snapshot(card: Card) -> Snapshot:
    return {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")}


def mcuboot_image(body: bytes, counter: int, key: ec.EllipticCurvePrivateKey = ISSUER) -> bytes:
    """imgtool's layout, ECDSA P-256 / SHA-256 (imgtool itself: the integration tests)."""
    prot = struct.pack("<HHHHI", 0x6908, 12, TlvType.SEC_CNT, 4, counter)
    header = struct.pack("<IIHHIIBBHII", 0x96F3B83D, 0, 0x200, 12, len(body), 0, 1, 2, 3, 0, 0)
    part = header + bytes(0x200 - 32) + body + prot
    h = hashes.Hash(hashes.SHA256())
    h.update(part)
    digest = h.finalize()
    sig = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    keyhash = TrustedKey(key.public_key()).keyhash(HashAlg.SHA256)
    tlvs = b"".join(
        struct.pack("<HH", kind, len(v)) + v
        for kind, v in ((TlvType.SHA256, digest), (TlvType.KEYHASH, keyhash), (0x22, sig))
    )
    return part + struct.pack("<HH", 0x6907, 4 + len(tlvs)) + tlvs


IMAGE_5 = mcuboot_image(b"firmware v5" * 100, 5)
IMAGE_2 = mcuboot_image(b"firmware v2" * 100, 2)


def new_card() -> Card:
    return Card.create(None, uid=UID, applets=[FirmwareApplet])


def perso_session(card: Card) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    sd.install_for_personalization(spec.AID)
    return sd


def personalise(
    card: Card, floor: int = 3, keys: list[ec.EllipticCurvePrivateKey] | None = None
) -> None:
    perso_session(card).store_data(perso_dgis([k.public_key() for k in keys or [ISSUER]], floor))


def session(card: Card, *, extended: bool = False) -> FirmwareSession:
    return FirmwareSession(SmartCardProtocol(LoopbackConnection(card), extended=extended))


def applet(card: Card) -> FirmwareApplet:
    app = card.applet(spec.AID)
    assert isinstance(app, FirmwareApplet)
    return app


@pytest.fixture
def card() -> Card:
    c = new_card()
    personalise(c)
    return c


# -- personalisation ------------------------------------------------------------------------------
def test_personalisation_keys_and_floor(card: Card) -> None:
    assert card.app_life_cycle(spec.AID) == APP_PERSONALISED
    assert card.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD) == (3).to_bytes(4, "big")
    state = session(card).state()
    assert (state.floor, state.key_count, state.session, state.last_verdict) == (3, 1, None, None)


def test_floor_defaults_to_zero_and_four_keys_fit() -> None:
    card = new_card()
    keys = [ISSUER, ISSUER_384, INTRUDER, ec.derive_private_key(7, ec.SECP256R1())]
    dgis = [d for d in perso_dgis([k.public_key() for k in keys], 0) if d[0] == Dgi.ISSUANCE_KEY]
    perso_session(card).store_data(dgis)
    assert card.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD) == bytes(4)
    assert session(card).state().key_count == 4


@pytest.mark.parametrize(
    ("dgis", "sw"),
    [
        ([(Dgi.ROLLBACK_FLOOR, bytes(4))], SW.CONDITIONS_NOT_SATISFIED),  # no key
        ([(Dgi.ISSUANCE_KEY, b"\x30\x03\x02\x01\x00")], SW.WRONG_DATA),
        ([(Dgi.ISSUANCE_KEY, TrustedKey(ISSUER.public_key()).spki[:-1])], SW.WRONG_DATA),
        (
            [(Dgi.ISSUANCE_KEY, TrustedKey(ISSUER.public_key()).spki)] * 2,
            SW.WRONG_DATA,
        ),
        ([(Dgi.ROLLBACK_FLOOR, bytes(3))], SW.WRONG_LENGTH),
        ([(Dgi.ROLLBACK_FLOOR, bytes(4)), (Dgi.ROLLBACK_FLOOR, bytes(4))], SW.WRONG_DATA),
        ([(0x0403, b"x")], SW.REFERENCED_DATA_NOT_FOUND),
    ],
)
def test_personalisation_refusals(dgis: list[tuple[int, bytes]], sw: SW) -> None:
    card = new_card()
    sd = perso_session(card)
    before = snapshot(card)
    with pytest.raises(ApduError) as err:
        sd.store_data(dgis)
    assert err.value.sw == sw
    assert snapshot(card) == before


def test_unsupported_key_types_refused() -> None:
    for key in (ec.generate_private_key(ec.SECP521R1()), rsa.generate_private_key(65537, 4096)):
        spki = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        card = new_card()
        sd = perso_session(card)
        before = snapshot(card)
        with pytest.raises(ApduError) as err:
            sd.store_data([(Dgi.ISSUANCE_KEY, spki)])
        assert err.value.sw == SW.WRONG_DATA
        assert snapshot(card) == before
        with pytest.raises(ValueError):
            perso_dgis([key.public_key()])


def test_fifth_key_refused() -> None:
    card = new_card()
    keys = [ec.derive_private_key(n, ec.SECP256R1()).public_key() for n in range(1, 6)]
    spkis = [TrustedKey(k).spki for k in keys]
    sd = perso_session(card)
    sd.store_data([(Dgi.ISSUANCE_KEY, s) for s in spkis[:4]], last=False)
    before = snapshot(card)
    with pytest.raises(ApduError) as err:
        sd.store_data([(Dgi.ISSUANCE_KEY, spkis[4])])
    assert err.value.sw == SW.NOT_ENOUGH_MEMORY
    assert snapshot(card) == before


def test_personalisation_data_after_completion_refused(card: Card) -> None:
    sd = perso_session(card)
    before = snapshot(card)
    with pytest.raises(ApduError) as err:
        sd.store_data(perso_dgis([INTRUDER.public_key()], 0))
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before


def test_perso_dgis_validation() -> None:
    pub = ISSUER.public_key()
    assert perso_dgis([pub], 0x01020304)[-1] == (Dgi.ROLLBACK_FLOOR, bytes([1, 2, 3, 4]))
    for bad in ([], [pub] * 2, [pub, INTRUDER.public_key(), ISSUER_384.public_key(), pub, pub]):
        with pytest.raises(ValueError):
            perso_dgis(bad)
    for floor in (-1, 1 << 32):
        with pytest.raises(ValueError):
            perso_dgis([pub], floor)


# -- verification ---------------------------------------------------------------------------------
@pytest.mark.parametrize("extended", [False, True])
def test_mcuboot_image_valid_and_recorded(card: Card, extended: bool) -> None:
    s = session(card, extended=extended)
    verdict = s.verify_image(io.BytesIO(IMAGE_5))
    assert verdict.valid and verdict.reason == "ok" and verdict.code is Reason.OK
    assert (verdict.version, verdict.security_counter) == (ImageVersion(1, 2, 3), 5)
    assert verdict.hash_alg is HashAlg.SHA256 and verdict.image_hash is not None
    state = s.state()
    assert state.last_verdict == verdict and state.session is None and state.floor == 3
    assert verdict.as_dict()["version"] == "1.2.3+0"


def test_rollback_and_tampered(card: Card) -> None:
    s = session(card)
    assert s.verify_image(io.BytesIO(IMAGE_2)).code is Reason.ROLLBACK
    bad = bytearray(IMAGE_5)
    bad[0x300] ^= 1
    verdict = s.verify_image(io.BytesIO(bytes(bad)))
    assert not verdict.valid and verdict.code is Reason.HASH_MISMATCH
    assert s.verify_image(io.BytesIO(mcuboot_image(b"x" * 99, 9, INTRUDER))).code is (
        Reason.UNKNOWN_KEY
    )
    assert s.verify_image(io.BytesIO(IMAGE_5[:-1])).code is Reason.TRUNCATED


def test_raw_mode(card: Card, tmp_path: Path) -> None:
    data = bytes(range(256)) * 40
    sig = sign_raw_image(ISSUER, data, version=V2, security_counter=8)
    path = tmp_path / "fw.bin"
    path.write_bytes(data)
    s = session(card)
    verdict = s.verify_image(path, signature=sig, version=V2, security_counter=8)
    assert verdict.valid and (verdict.version, verdict.security_counter) == (V2, 8)
    assert not s.verify_image(path, signature=sig, version=V2, security_counter=9).valid
    assert s.verify_image(
        path, signature=sig, version=ImageVersion(2, 0, 1), security_counter=8
    ).code is (Reason.BAD_SIGNATURE)
    low = sign_raw_image(ISSUER, data, version=V2, security_counter=1)
    assert (
        s.verify_image(path, signature=low, version=V2, security_counter=1).code is Reason.ROLLBACK
    )
    p384 = sign_raw_image(ISSUER, data, version=V2, security_counter=8, hash_alg=HashAlg.SHA384)
    assert s.verify_image(
        io.BytesIO(data), signature=p384, version=V2, security_counter=8, hash_alg=HashAlg.SHA384
    ).valid

    # A detached signature file names hash algorithm, version and counter itself.
    envelope = RawSignature(HashAlg.SHA256, V2, 8, sig)
    assert s.verify_image(path, signature=envelope.encode()).valid
    forged = RawSignature(HashAlg.SHA256, V2, 80, sig).encode()
    assert s.verify_image(path, signature=forged).code is Reason.BAD_SIGNATURE
    assert s.verify_image(path, signature=sig).error  # bare signature, no version: an error

    # Unseekable stream without a length: an error, never VALID.
    class Pipe(io.RawIOBase):
        def seekable(self) -> bool:
            return False

    verdict = s.verify_image(Pipe(), signature=sig, version=V2, security_counter=8)  # type: ignore[arg-type]
    assert not verdict.valid and verdict.error


def test_confirm_raises_floor_only_after_valid(card: Card) -> None:
    s = session(card)
    with pytest.raises(ConfirmRefusedError):
        s.confirm()  # nothing verified yet
    assert not s.verify_image(io.BytesIO(IMAGE_5[:-3])).valid
    with pytest.raises(ConfirmRefusedError):
        s.confirm()  # the last verdict is INVALID
    assert s.verify_image(io.BytesIO(IMAGE_5)).valid
    before = snapshot(card)
    assert s.confirm() == 5
    assert card.nvm.get(SHARED_FIRMWARE_FLOOR_RECORD) == (5).to_bytes(4, "big")
    changed = {k for k in snapshot(card) if snapshot(card)[k] != before.get(k)}
    assert changed == {SHARED_FIRMWARE_FLOOR_RECORD}
    after = snapshot(card)
    with pytest.raises(ConfirmRefusedError):
        s.confirm()  # counter no longer above the floor
    assert snapshot(card) == after
    assert s.verify_image(io.BytesIO(mcuboot_image(b"old", 4))).code is Reason.ROLLBACK
    assert s.verify_image(io.BytesIO(IMAGE_5)).valid  # same counter as the floor: fine
    with pytest.raises(ConfirmRefusedError):
        s.confirm()


def test_confirm_survives_a_power_cycle(card: Card) -> None:
    assert session(card).verify_image(io.BytesIO(IMAGE_5)).valid
    card.power_off()  # the device reboots into the new firmware
    assert confirm(LoopbackConnection(card)) == 5


# -- the transient session ------------------------------------------------------------------------
def test_session_ends_on_select_power_and_finish(card: Card) -> None:
    s = session(card)
    s.begin()
    s.update(IMAGE_5[:100])
    assert s.state().session is Mode.MCUBOOT
    s.protocol.select(spec.AID)
    with pytest.raises(FirmwareStateError):
        s.update(IMAGE_5[100:200])
    s.begin()
    card.power_off()
    s = session(card)
    with pytest.raises(FirmwareStateError):
        s.finish()
    s.begin()
    s.update(IMAGE_5)
    s.finish()
    with pytest.raises(FirmwareStateError):
        s.finish()


def test_begin_restarts_and_bad_begin_keeps_the_session(card: Card) -> None:
    s = session(card)
    s.begin()
    s.update(b"garbage")
    s.begin()  # a new BEGIN drops the old session
    s.update(IMAGE_5[:1000])
    with pytest.raises(ApduError) as err:
        s.protocol.transmit(CLA_IOTID, Ins.BEGIN, Mode.RAW, 0, b"\x95\x01\x01")
    assert err.value.sw == SW.WRONG_DATA
    s.update(IMAGE_5[1000:])
    assert s.finish().valid


def test_update_never_touches_nvm_and_the_body_is_not_buffered(card: Card) -> None:
    body = bytes(5 * 1024 * 1024)
    image = mcuboot_image(body, 6)
    s = session(card, extended=True)
    app = applet(card)
    s.begin()
    before, commits = snapshot(card), card.nvm.commits
    bound = 32 + 2 * spec.MAX_TLV_AREA
    for i in range(0, len(image), 65535):
        s.update(image[i : i + 65535])
        assert app.transient_buffer_size <= bound
    assert snapshot(card) == before and card.nvm.commits == commits
    assert s.finish().valid
    tlv_bytes = len(image) - 0x200 - len(body)
    assert 32 <= app.transient_buffer_peak <= tlv_bytes
    assert app.transient_buffer_size == 0


# -- negative matrix ------------------------------------------------------------------------------
COMMANDS: list[tuple[Ins, int, bytes]] = [
    (Ins.BEGIN, Mode.MCUBOOT, b""),
    (Ins.UPDATE, 0, b"x"),
    (Ins.FINISH, 0, b""),
    (Ins.CONFIRM, 0, b""),
    (Ins.GET_STATE, 0, b""),
]


@pytest.mark.parametrize(("ins", "p1", "data"), COMMANDS)
def test_every_command_before_personalisation(ins: Ins, p1: int, data: bytes) -> None:
    card = new_card()
    s = session(card)
    before = snapshot(card)
    with pytest.raises(ApduError) as err:
        s.protocol.transmit(CLA_IOTID, ins, p1, 0, data)
    assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before
    verdict = verify_image(LoopbackConnection(card), io.BytesIO(IMAGE_5))
    assert not verdict.valid and verdict.error and "6985" in verdict.reason


@pytest.mark.parametrize(("ins", "p1", "data"), COMMANDS)
def test_wrong_p1p2_and_cla(card: Card, ins: Ins, p1: int, data: bytes) -> None:
    s = session(card)
    s.begin()
    before = snapshot(card)
    for bad_p1, bad_p2 in ((p1, 1), (0x7F if ins == Ins.BEGIN else 1, 0)):
        with pytest.raises(ApduError) as err:
            s.protocol.transmit(CLA_IOTID, ins, bad_p1, bad_p2, data)
        assert err.value.sw == SW.INCORRECT_P1P2
    with pytest.raises(ApduError) as err:
        s.protocol.transmit(0x00, ins, p1, 0, data)
    assert err.value.sw == SW.CLA_NOT_SUPPORTED
    assert snapshot(card) == before
    assert s.state().session is Mode.MCUBOOT  # nothing dropped the session


def _raw_begin(**override: bytes) -> bytes:
    fields = {
        Tag.HASH_ALG: b"\x01",
        Tag.IMAGE_LENGTH: (10).to_bytes(4, "big"),
        Tag.VERSION: V2.encode(),
        Tag.SECURITY_COUNTER: (4).to_bytes(4, "big"),
    }
    fields.update({Tag[k]: v for k, v in override.items()})
    return b"".join(tlv(tag, v) for tag, v in fields.items() if v != b"-")


@pytest.mark.parametrize(
    ("ins", "p1", "data", "sw"),
    [
        (Ins.BEGIN, Mode.MCUBOOT, b"\x00", SW.WRONG_LENGTH),
        (Ins.BEGIN, Mode.RAW, b"", SW.WRONG_DATA),
        (Ins.BEGIN, Mode.RAW, b"\x95\x01", SW.WRONG_DATA),  # bad BER
        (Ins.BEGIN, Mode.RAW, _raw_begin(HASH_ALG=b"\x03"), SW.WRONG_DATA),
        (Ins.BEGIN, Mode.RAW, _raw_begin(HASH_ALG=b"\x01\x01"), SW.WRONG_DATA),
        (Ins.BEGIN, Mode.RAW, _raw_begin(VERSION=bytes(7)), SW.WRONG_DATA),
        (Ins.BEGIN, Mode.RAW, _raw_begin(IMAGE_LENGTH=b"-"), SW.WRONG_DATA),
        (Ins.BEGIN, Mode.RAW, _raw_begin() + tlv(Tag.FLOOR, bytes(4)), SW.WRONG_DATA),
        (Ins.BEGIN, Mode.RAW, _raw_begin() + tlv(Tag.HASH_ALG, b"\x01"), SW.WRONG_DATA),
        (Ins.UPDATE, 0, b"", SW.WRONG_LENGTH),
        (Ins.FINISH, 0, b"\x00", SW.WRONG_LENGTH),  # MCUboot mode: no signature
        (Ins.CONFIRM, 0, b"\x00", SW.WRONG_LENGTH),
        (Ins.GET_STATE, 0, b"\x00", SW.WRONG_LENGTH),
        (0x4A, 0, b"", SW.INS_NOT_SUPPORTED),
    ],
)
def test_malformed_commands(card: Card, ins: int, p1: int, data: bytes, sw: SW) -> None:
    s = session(card)
    s.begin()
    s.update(IMAGE_5[:700])
    before = snapshot(card)
    with pytest.raises(ApduError) as err:
        s.protocol.transmit(CLA_IOTID, ins, p1, 0, data)
    assert err.value.sw == sw
    assert snapshot(card) == before
    s.update(IMAGE_5[700:])  # the session survived the refusal
    assert s.finish().valid


def test_raw_finish_needs_a_signature_of_sane_size(card: Card) -> None:
    s = session(card)
    s.begin_raw(length=3, version=V2, security_counter=4)
    s.update(b"abc")
    before = snapshot(card)
    for sig in (b"", bytes(spec.MAX_SIGNATURE_LEN + 1)):
        with pytest.raises(ApduError) as err:
            s.finish(sig)
        assert err.value.sw == SW.WRONG_LENGTH
    assert snapshot(card) == before
    assert s.finish(b"\x30\x00").code is Reason.BAD_SIGNATURE


def test_update_and_finish_without_session(card: Card) -> None:
    s = session(card)
    before = snapshot(card)
    for call in (lambda: s.update(b"x"), s.finish):
        with pytest.raises(FirmwareStateError) as err:
            call()
        assert err.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert snapshot(card) == before


# -- host fail-safe -------------------------------------------------------------------------------
class FlakyConnection(LoopbackConnection):
    """Fails (transport error) or answers garbage from the n-th UPDATE on."""

    def __init__(self, card: Card, mode: str, after: int = 2) -> None:
        super().__init__(card)
        self.mode, self.after = mode, after

    def transmit(self, apdu: bytes) -> bytes:
        if apdu[1] in (Ins.UPDATE, Ins.FINISH):
            self.after -= 1
            if self.after < 0:
                if self.mode == "transport":
                    raise TransportError("bus fault")
                if self.mode == "garbage":
                    return b"\x90"
                if self.mode == "forged" and apdu[1] == Ins.FINISH:
                    return tlv(Tag.VERDICT, b"\x5a") + tlv(Tag.REASON, b"\x0e") + b"\x90\x00"
        return super().transmit(apdu)


@pytest.mark.parametrize("mode", ["transport", "garbage", "forged"])
def test_fail_safe_on_bus_and_response_errors(card: Card, mode: str) -> None:
    bad = bytearray(IMAGE_5)
    bad[0x250] ^= 0x80
    verdict = verify_image(FlakyConnection(card, mode), io.BytesIO(bytes(bad)), chunk=200)
    assert not verdict.valid and verdict.error and verdict.reason.startswith("error: ")
    assert verdict.as_dict()["valid"] is False


def test_fail_safe_on_missing_file_and_bad_arguments(card: Card, tmp_path: Path) -> None:
    conn = LoopbackConnection(card)
    assert verify_image(conn, tmp_path / "missing.bin").error
    assert verify_image(conn, io.BytesIO(IMAGE_5), chunk=0x10000).error
    assert verify_image(conn, io.BytesIO(IMAGE_5), signature=b"x").error  # no version/counter
    assert verify_image(SmartCardProtocol(conn), io.BytesIO(IMAGE_5), extended=True).error
    assert verify_image(conn, io.BytesIO(IMAGE_5), extended=True).valid


@pytest.mark.parametrize(
    "data",
    [
        b"",
        tlv(Tag.VERDICT, b"\x5a"),
        tlv(Tag.VERDICT, b"\x5a") + tlv(Tag.REASON, b"\x00"),  # VALID without version etc.
        tlv(Tag.VERDICT, b"\x5a") + tlv(Tag.REASON, b"\x12"),
        tlv(Tag.VERDICT, b"\x5b") + tlv(Tag.REASON, b"\x00"),
        tlv(Tag.VERDICT, b"\xa5") + tlv(Tag.REASON, b"\x7f"),
        tlv(Tag.VERDICT, b"\xa5") + tlv(Tag.REASON, b"\x12") + tlv(Tag.HASH_ALG, b"\x01"),
        tlv(Tag.VERDICT, b"\xa5") + tlv(Tag.REASON, b"\x12") + tlv(Tag.FLOOR, bytes(4)),
        tlv(Tag.VERDICT, b"\xa5") + tlv(Tag.VERDICT, b"\xa5") + tlv(Tag.REASON, b"\x12"),
        b"\x90\x05",
    ],
)
def test_parse_verdict_is_strict(data: bytes) -> None:
    with pytest.raises(BadResponseError):
        parse_verdict(data)


def test_verdict_error_property() -> None:
    assert Verdict.failure("x") == Verdict(False, "error: x")
    assert Verdict.failure("x").error
    ok: Callable[[], Verdict] = lambda: parse_verdict(  # noqa: E731
        tlv(Tag.VERDICT, b"\xa5") + tlv(Tag.REASON, bytes([Reason.TRUNCATED]))
    )
    assert not ok().error and ok().reason == "truncated"
