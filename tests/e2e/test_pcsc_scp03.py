"""SCP03 through the real stack: ``iotid se serve`` -> vpcd -> pcscd -> pyscard -> our host.

And OpenSC's ``opensc-tool`` (a PC/SC program nobody here wrote) talking to the same card.
"""

from __future__ import annotations

import secrets
import subprocess
from typing import TYPE_CHECKING

import pytest

from iotid.apdu import ApduError, CommandApdu
from iotid.host import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec.iso7816 import SW

if TYPE_CHECKING:
    from conftest import ServedCard

pcsc = pytest.importorskip("iotid.transport.pcsc", reason="pyscard/libpcsclite not available")

pytestmark = [pytest.mark.pcsc, pytest.mark.slow]
UID = bytes.fromhex("00112233445566778899")


@pytest.mark.parametrize("level", [0x01, 0x03, 0x11, 0x13, 0x33])
def test_scp03_session_over_pcsc(served_card: ServedCard, level: int) -> None:
    with pcsc.PcscConnection(served_card.reader, timeout=10) as conn:
        sd = SecurityDomainSession(conn)
        info = sd.authenticate(StaticKeys.gp_test_keys(), level=level)
        assert info.key_diversification_data == UID
        assert sd.get_cplc().uid == UID
        keys = sd.get_key_information()
        assert set(keys) == {(1, 0x30), (2, 0x30), (3, 0x30)}
        # A long command (chained short APDUs, MAC over 00 hi lo) and a long answer (61xx).
        cin = secrets.token_bytes(300)
        sd.protocol.transmit(0x80, 0xE2, 0x90, 0x00, bytes([0x45, 0x82, 0x01, 0x2C]) + cin)
        assert sd.get_data(0x0045) == cin


def test_put_key_over_pcsc_persists_across_restart(served_card: ServedCard) -> None:
    new = StaticKeys(secrets.token_bytes(16), secrets.token_bytes(16), secrets.token_bytes(16))
    with pcsc.PcscConnection(served_card.reader, timeout=10) as conn:
        sd = SecurityDomainSession(conn)
        sd.authenticate(StaticKeys.gp_test_keys())
        sd.put_key(0x31, new, replace_kvn=0x30)
        sd.authenticate(new, kvn=0x31)
        with pytest.raises(ApduError) as err:
            sd.authenticate(StaticKeys.gp_test_keys(), kvn=0x30)
        assert err.value.sw == SW.REFERENCED_DATA_NOT_FOUND
        # A tampered C-MAC is refused and aborts the session.
        sd.authenticate(new, kvn=0x31)
        channel = sd.protocol.channel
        assert channel is not None
        raw = channel.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0xE0, b"", 256)).encode()
        tampered = raw[:-2] + bytes([raw[-2] ^ 1]) + raw[-1:]
        assert conn.transmit(tampered)[-2:] == b"\x69\x82"
        assert conn.transmit(bytes.fromhex("00CA9F7F00"))[-2:] == b"\x69\x82"
    assert served_card.terminate() == 0
    card = Card.open(served_card.state_dir)
    assert [kvn for kvn, _, _ in card.info().key_sets] == [0x31]


def test_opensc_tool_selects_the_isd(served_card: ServedCard) -> None:
    out = subprocess.run(
        [
            "opensc-tool",
            "--reader",
            served_card.reader,
            "-s",
            "00A4040008A000000151000000",
            "-s",
            "00CA9F7F00",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    text = out.stdout + out.stderr
    assert text.count("SW1=0x90, SW2=0x00") == 2, text
    assert "6F 41 84 08 A0 00 00 01 51 00 00 00" in text, text  # the ISD's FCI
    # The CPLC carries the UID: IC fabricator and type, then (offset 12) serial and batch.
    assert "00 11 22 33 49 44" in text and "44 55 66 77" in text and "88 99" in text, text
