"""Interoperability of the card emulator with yubikit, an independent GlobalPlatform SCP03 client.

Scope: yubikit's (yubikey-manager, written by Yubico) ``SecurityDomainSession`` drives our card
through a ``SmartCardConnection`` that calls ``Card.process``, in short APDUs (with ISO command
chaining, C-MAC over ``00 hi lo`` for long commands, 61xx GET RESPONSE) and in extended APDUs:
SCP03 at level 0x33 (GPC 2.3.1 Amd D), wrapped GET DATA (key information, card recognition data,
CPLC), PUT KEY (add and replace), DELETE KEY, STORE DATA (BER-TLV), long commands, a tampered
C-MAC (the session aborts, Amd D section 5.6), wrong static keys, and our own host
(``iotid.host``) and yubikit taking turns on the same card.

Not covered: SCP11 (yubikit supports it, our card does not), the exact status words of error
cases (tests/unit/se/test_isd_negative.py), random input (test_card_fuzz.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator

import pytest
from yubikit.core import TRANSPORT, BadResponseError, Tlv
from yubikit.core.smartcard import ApduError, ApduFormat, SmartCardConnection
from yubikit.core.smartcard.scp import KeyRef, Scp03KeyParams
from yubikit.core.smartcard.scp import StaticKeys as YkStaticKeys
from yubikit.securitydomain import SecurityDomainSession as YkSession

from iotid.apdu import ApduError as OurApduError
from iotid.apdu import parse_tlvs
from iotid.host import SecurityDomainSession
from iotid.host.errors import AuthenticationError
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec import gp
from iotid.spec.gp import DataTag
from iotid.spec.iso7816 import CLA_CHAINING, CLA_SECURE_MESSAGING, SW
from iotid.transport.loopback import LoopbackConnection

UID = bytes.fromhex("4711AB0C0102030405A5")
SCP03_KID = 0x01
AES = 0x88


class CardConnection(SmartCardConnection):
    """yubikit's view of our card: every APDU goes to ``Card.process``; all traffic is recorded.

    ``corrupt_next`` flips the last byte of the next command (the last C-MAC byte of a wrapped
    command that has no Le, as yubikit sends them).
    """

    def __init__(self, card: Card) -> None:
        self.card = card
        card.power_on()
        self.sent: list[bytes] = []
        self.answers: list[int] = []
        self.corrupt_next = False

    @property
    def transport(self) -> TRANSPORT:
        return TRANSPORT.USB

    def send_and_receive(self, apdu: bytes) -> tuple[bytes, int]:
        apdu = bytes(apdu)
        if self.corrupt_next:
            self.corrupt_next = False
            apdu = apdu[:-1] + bytes([apdu[-1] ^ 0x01])
        self.sent.append(apdu)
        resp = self.card.process(apdu)
        sw = int.from_bytes(resp[-2:], "big")
        self.answers.append(sw)
        return resp[:-2], sw

    def close(self) -> None:
        """Nothing to release: the card lives in this process."""


def is_extended(apdu: bytes) -> bool:
    """ISO 7816-4 section 5.1: a body starting with 00 and longer than one byte is extended."""
    return len(apdu) >= 7 and apdu[4] == 0x00


def yk_keys(keys: StaticKeys) -> YkStaticKeys:
    return YkStaticKeys(keys.enc, keys.mac, keys.dek)


def random_keys() -> StaticKeys:
    return StaticKeys(os.urandom(16), os.urandom(16), os.urandom(16))


def scp03(kvn: int, keys: StaticKeys) -> Scp03KeyParams:
    return Scp03KeyParams(KeyRef(SCP03_KID, kvn), yk_keys(keys))


TEST_KEYS = StaticKeys.gp_test_keys()
DEFAULT = Scp03KeyParams(KeyRef(SCP03_KID, gp.TEST_KEY_VERSION), YkStaticKeys.default())


def key_set(kvn: int) -> dict[KeyRef, dict[int, int]]:
    """yubikit's ``get_key_information`` for one AES-128 SCP03 key set."""
    return {KeyRef(kid, kvn): {AES: 16} for kid in (gp.KEY_ID_ENC, gp.KEY_ID_MAC, gp.KEY_ID_DEK)}


class Yk:
    """A yubikit session on our card plus its recording connection."""

    def __init__(self, card: Card, fmt: str) -> None:
        self.conn = CardConnection(card)
        self.sd = YkSession(self.conn)
        with warnings.catch_warnings():
            # yubikit deprecates setting the format directly; its configure() only knows YubiKeys.
            warnings.simplefilter("ignore", DeprecationWarning)
            self.sd.protocol.apdu_format = (
                ApduFormat.EXTENDED if fmt == "extended" else ApduFormat.SHORT
            )
        self.fmt = fmt

    def check_wire_format(self) -> None:
        extended = [a for a in self.conn.sent if is_extended(a)]
        if self.fmt == "short":
            assert not extended
        else:
            assert extended


@pytest.fixture
def card() -> Card:
    return Card.create(None, uid=UID)


@pytest.fixture(params=["short", "extended"])
def yk(request: pytest.FixtureRequest, card: Card) -> Iterator[Yk]:
    y = Yk(card, request.param)
    yield y
    y.check_wire_format()


# -- SCP03 and GET DATA ------------------------------------------------------------------------


def test_open_scp03_and_wrapped_get_data(yk: Yk) -> None:
    yk.sd.authenticate(DEFAULT)
    start = len(yk.conn.sent)
    assert yk.sd.get_key_information() == key_set(gp.TEST_KEY_VERSION)

    # Card recognition data (GPC 2.3.1 Annex H.2): the SCP OID, then SCP 03 with i = 70.
    crd = yk.sd.get_card_recognition_data()
    items = {t.tag: t for t in parse_tlvs(crd)}
    (scp_oid,) = parse_tlvs(items[0x64].value)
    assert scp_oid.tag == 0x06
    assert scp_oid.value == gp.OID_SCP + bytes([gp.SCP03, 0x70])

    cplc = yk.sd.get_data(DataTag.CPLC)
    assert len(cplc) == 42
    assert cplc[0:4] + cplc[12:18] == UID

    # Every command after EXTERNAL AUTHENTICATE travelled wrapped, and the R-MAC checked out.
    assert all(a[0] & CLA_SECURE_MESSAGING for a in yk.conn.sent[start:])
    assert set(yk.conn.answers[start:]) == {SW.OK}


def test_put_key_replace_and_delete(yk: Yk) -> None:
    k31, k32 = random_keys(), random_keys()
    yk.sd.authenticate(DEFAULT)
    yk.sd.put_key(KeyRef(SCP03_KID, 0x31), yk_keys(k31))
    yk.sd.authenticate(scp03(0x31, k31))
    assert yk.sd.get_key_information() == key_set(0x30) | key_set(0x31)

    yk.sd.put_key(KeyRef(SCP03_KID, 0x32), yk_keys(k32), replace_kvn=0x31)
    yk.sd.authenticate(scp03(0x32, k32))
    assert yk.sd.get_key_information() == key_set(0x30) | key_set(0x32)
    with pytest.raises(
        ValueError
    ):  # 6A88 on INITIALIZE UPDATE: yubikit's "Incorrect SCP parameters"
        yk.sd.authenticate(scp03(0x31, k31))

    yk.sd.authenticate(scp03(0x32, k32))
    yk.sd.delete_key(kvn=gp.TEST_KEY_VERSION)
    assert yk.sd.get_key_information() == key_set(0x32)
    with pytest.raises(ValueError):
        yk.sd.authenticate(DEFAULT)


def test_store_data_iin_read_back_by_our_host(card: Card, yk: Yk) -> None:
    iin = bytes.fromhex("0102030405")
    yk.sd.authenticate(DEFAULT)
    yk.sd.store_data(Tlv(DataTag.IIN, iin))

    ours = SecurityDomainSession(LoopbackConnection(card))
    assert ours.get_data(DataTag.IIN) == iin
    ours.authenticate(TEST_KEYS)
    assert ours.get_data(DataTag.IIN) == iin
    assert ours.get_data(DataTag.IIN, tagged=True) == bytes([DataTag.IIN, len(iin)]) + iin


def test_long_command(card: Card, yk: Yk) -> None:
    cin = os.urandom(600)
    yk.sd.authenticate(DEFAULT)
    yk.sd.store_data(Tlv(DataTag.CIN, cin))
    assert yk.sd.get_data(DataTag.CIN) == cin  # a 616-byte wrapped answer
    if yk.fmt == "short":
        # ISO 7816-4 section 5.3.3: the 600-byte command went as a chain of short APDUs...
        assert any(a[0] & CLA_CHAINING for a in yk.conn.sent)
        # ...and the long answer came back in 61xx pieces.
        assert any(sw >> 8 == 0x61 for sw in yk.conn.answers)
    else:
        assert any(len(a) > 600 for a in yk.conn.sent)

    ours = SecurityDomainSession(LoopbackConnection(card))
    ours.authenticate(TEST_KEYS)
    assert ours.get_data(DataTag.CIN) == cin


# -- security errors ---------------------------------------------------------------------------


def test_tampered_mac_aborts_the_session(card: Card, yk: Yk) -> None:
    yk.sd.authenticate(DEFAULT)
    assert yk.sd.get_key_information() == key_set(gp.TEST_KEY_VERSION)
    before = {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")}

    yk.conn.corrupt_next = True
    with pytest.raises(ApduError) as exc:
        yk.sd.store_data(Tlv(DataTag.IIN, b"\x99\x99"))
    assert exc.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED

    # Amd D section 5.6: every later command is refused, wrapped or plain.
    for attempt in (
        yk.sd.get_key_information,
        lambda: yk.sd.get_data(DataTag.CPLC),
        lambda: yk.sd.store_data(Tlv(DataTag.IIN, b"\x01")),
    ):
        with pytest.raises(ApduError) as exc:
            attempt()
        assert exc.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    resp = card.process(bytes.fromhex("00CA004200"))
    assert resp == SW.SECURITY_STATUS_NOT_SATISFIED.to_bytes(2, "big")
    assert {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")} == before

    # A new authentication opens a working session again.
    yk.sd.authenticate(DEFAULT)
    assert yk.sd.get_key_information() == key_set(gp.TEST_KEY_VERSION)
    with pytest.raises(ApduError) as exc:
        yk.sd.get_data(DataTag.IIN)  # nothing was stored
    assert exc.value.sw == SW.REFERENCED_DATA_NOT_FOUND


def test_wrong_static_keys(card: Card, yk: Yk) -> None:
    wrong = scp03(gp.TEST_KEY_VERSION, random_keys())
    with pytest.raises((BadResponseError, ValueError)):
        yk.sd.authenticate(wrong)
    assert card.security_level() == 0
    # No EXTERNAL AUTHENTICATE was sent: yubikit stopped at the card cryptogram.
    assert not any(a[1] == gp.GpIns.EXTERNAL_AUTHENTICATE for a in yk.conn.sent)


# -- our host and yubikit on the same card -----------------------------------------------------


def test_our_host_and_yubikit_take_turns(card: Card, yk: Yk) -> None:
    k31, k32 = random_keys(), random_keys()
    iin = bytes.fromhex("0A0B0C")
    ours = SecurityDomainSession(LoopbackConnection(card), extended=yk.fmt == "extended")

    yk.sd.authenticate(DEFAULT)
    yk.sd.put_key(KeyRef(SCP03_KID, 0x31), yk_keys(k31))

    info = ours.authenticate(k31, kvn=0x31)
    assert info.kvn == 0x31
    ours.put_key(0x32, k32, replace_kvn=0x31)  # our encoding: 88 11 10 <key>
    assert ours.get_key_information() == {
        (kid, kvn): (AES, 16) for kvn in (0x30, 0x32) for kid in (1, 2, 3)
    }

    yk.sd.authenticate(scp03(0x32, k32))
    assert yk.sd.get_key_information() == key_set(0x30) | key_set(0x32)
    yk.sd.delete_key(kvn=gp.TEST_KEY_VERSION)

    ours.authenticate(k32, kvn=0x32)
    ours.store_data([(gp.IsdDgi.IIN, iin)])

    yk.sd.authenticate(scp03(0x32, k32))
    assert yk.sd.get_data(DataTag.IIN) == iin

    with pytest.raises(OurApduError) as exc:
        ours.authenticate(TEST_KEYS, kvn=gp.TEST_KEY_VERSION)
    assert exc.value.sw == SW.REFERENCED_DATA_NOT_FOUND
    with pytest.raises(AuthenticationError):
        ours.authenticate(TEST_KEYS)  # KVN 0: the card's first key set, 0x32
