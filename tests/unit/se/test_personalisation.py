"""INSTALL [for personalization] + STORE DATA through the ISD to an application, and the ISD's
own DGIs. The target applet is defined here (the identity applets arrive with their own tests)."""

from __future__ import annotations

import pytest

from iotid.apdu import ApduError, CommandApdu, encode_dgi
from iotid.host import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.applet import Applet, ClaClass, handles
from iotid.spec.gp import GpIns, IsdDgi
from iotid.spec.iso7816 import SW
from iotid.transport.loopback import LoopbackConnection

RECORDER_AID = bytes.fromhex("F0696F74696474657374")


class Recorder(Applet):
    """Keeps every DGI it is given; answers GET DATA with what it holds."""

    AID = RECORDER_AID
    NAME = "recorder"

    def store_data(self, dgi: int, value: bytes) -> None:
        if dgi == 0x0BAD:
            raise ApduError(SW.WRONG_DATA)
        self.store(f"dgi/{dgi:04x}", value)

    def end_personalisation(self) -> None:
        self.store("done", b"\x01")

    @handles(GpIns.GET_DATA, cla=ClaClass.INTERINDUSTRY)
    def get(self, cmd: CommandApdu) -> bytes:
        value = self.load(f"dgi/{cmd.p1:02x}{cmd.p2:02x}")
        if value is None:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return value


@pytest.fixture
def card() -> Card:
    return Card.create(None, uid=bytes(range(10)), applets=[Recorder])


def session(card: Card, level: int = 0x33) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys(), level=level)
    return sd


def test_store_data_reaches_the_target_with_secrets_decrypted(card: Card) -> None:
    sd = session(card)
    sd.install_for_personalization(RECORDER_AID)
    secret = bytes(range(40))
    public = b"hello" * 120  # spans several STORE DATA blocks
    sd.store_data([(0x0101, public), (0x8001, secret)])
    app = card.applet(RECORDER_AID)
    assert app is not None
    assert app.load("dgi/0101") == public
    assert app.load("dgi/8001") == secret  # decrypted from Key-DEK encryption
    assert app.load("done") == b"\x01"


def test_secret_dgi_needs_command_encryption(card: Card) -> None:
    sd = session(card, level=0x01)  # C-MAC only: secrets would travel without C-DECRYPTION
    sd.install_for_personalization(RECORDER_AID)
    with pytest.raises(ApduError) as err:
        sd.store_data([(0x8001, b"k" * 16)])
    assert err.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED
    app = card.applet(RECORDER_AID)
    assert app is not None and app.load("dgi/8001") is None


def test_target_error_rolls_back_the_whole_block(card: Card) -> None:
    sd = session(card)
    sd.install_for_personalization(RECORDER_AID)
    with pytest.raises(ApduError) as err:
        sd.store_data([(0x0101, b"first"), (0x0BAD, b"x")])
    assert err.value.sw == SW.WRONG_DATA
    app = card.applet(RECORDER_AID)
    assert app is not None and app.load("dgi/0101") is None


def test_block_numbers_must_follow(card: Card) -> None:
    sd = session(card)
    sd.install_for_personalization(RECORDER_AID)
    with pytest.raises(ApduError) as err:
        sd.protocol.transmit(0x80, GpIns.STORE_DATA, 0x88, 0x05, encode_dgi(0x0101, b"x"))
    assert err.value.sw == SW.INCORRECT_P1P2


def test_install_for_personalization_unknown_aid(card: Card) -> None:
    sd = session(card)
    with pytest.raises(ApduError) as err:
        sd.install_for_personalization(bytes.fromhex("F000000000"))
    assert err.value.sw == SW.REFERENCED_DATA_NOT_FOUND


def test_personalisation_needs_a_session(card: Card) -> None:
    sd = SecurityDomainSession(LoopbackConnection(card))
    with pytest.raises(ApduError) as err:
        sd.install_for_personalization(RECORDER_AID)
    assert err.value.sw == SW.SECURITY_STATUS_NOT_SATISFIED


def test_isd_dgis_iin_cin_and_key_set(card: Card) -> None:
    sd = session(card)
    new = StaticKeys(b"\x11" * 16, b"\x22" * 16, b"\x33" * 16)
    sd.store_data(
        [
            (IsdDgi.IIN, b"\x42\x01"),
            (IsdDgi.CIN, b"\x45\x02"),
            (IsdDgi.SCP03_KEY_SET, b"\x31" + new.enc + new.mac + new.dek),
        ]
    )
    assert sd.get_data(0x0042) == b"\x42\x01"
    assert sd.get_data(0x0045) == b"\x45\x02"
    fresh = SecurityDomainSession(LoopbackConnection(card))
    fresh.authenticate(new, kvn=0x31)
    assert (0x01, 0x31) in fresh.get_key_information()


def test_selected_applet_sees_its_data_and_a_plain_channel(card: Card) -> None:
    sd = session(card)
    sd.install_for_personalization(RECORDER_AID)
    sd.store_data([(0x0102, b"value")])
    conn = LoopbackConnection(card)
    assert (
        conn.transmit(b"\x00\xa4\x04\x00" + bytes([len(RECORDER_AID)]) + RECORDER_AID)[-2:]
        == b"\x90\x00"
    )
    assert conn.transmit(bytes.fromhex("00CA010200")) == b"value\x90\x00"
    # The recorder does not use secure messaging: an SM command is refused.
    assert conn.transmit(bytes.fromhex("04CA010200"))[-2:] == b"\x68\x82"
