"""The card served through the real PC/SC stack: card process -> vpcd -> pcscd -> pyscard/OpenSC.

Needs root (or a running pcscd with the vpcd reader) and the Debian packages pcscd,
vsmartcard-vpcd and opensc; see tests/e2e/conftest.py. The card process comes from
``conftest.serve_command``.
"""

from __future__ import annotations

import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from iotid.spec.gp import ISD_AID, DataTag, GpIns
from iotid.spec.iso7816 import (
    CLA_PROPRIETARY,
    SELECT_BY_DF_NAME,
    SELECT_FIRST_OR_ONLY,
    SW,
    Ins,
)
from iotid.transport.base import TransportError

if TYPE_CHECKING:
    from conftest import ServedCard

pcsc = pytest.importorskip("iotid.transport.pcsc", reason="pyscard/libpcsclite not available")

pytestmark = [pytest.mark.pcsc, pytest.mark.slow]

OK = int(SW.OK).to_bytes(2, "big")
# ISO 7816-4 §11.2.2 SELECT by DF name, first occurrence, Le present.
SELECT_ISD = (
    bytes([0x00, Ins.SELECT, SELECT_BY_DF_NAME, SELECT_FIRST_OR_ONLY, len(ISD_AID)])
    + ISD_AID
    + b"\x00"
)
# GPC 2.3.1 §11.3 GET DATA, card recognition data; CLA 80 returns the whole tag-66 object.
GET_RECOGNITION_DATA = (
    bytes([CLA_PROPRIETARY, GpIns.GET_DATA])
    + DataTag.CARD_RECOGNITION_DATA.to_bytes(2, "big")
    + b"\x00"
)


def _opensc_reader_index(reader: str) -> int:
    listing = subprocess.run(
        ["opensc-tool", "--list-readers"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for line in listing.splitlines():
        match = re.match(r"\s*(\d+)\s+(Yes|No)\s+.*?\b(\S.*)$", line)
        if match and line.rstrip().endswith(reader):
            return int(match.group(1))
    raise AssertionError(f"opensc-tool does not list {reader!r}:\n{listing}")


def test_select_and_get_data_through_pcscd(served_card: ServedCard) -> None:
    assert served_card.reader in pcsc.list_readers()
    with pcsc.PcscConnection(served_card.reader, timeout=10) as conn:
        assert conn.reader == served_card.reader
        assert conn.atr[0] in (0x3B, 0x3F)  # ISO 7816-3 §8.1 TS

        answer = conn.transmit(SELECT_ISD)
        assert answer[-2:] == OK

        answer = conn.transmit(GET_RECOGNITION_DATA)
        assert answer[-2:] == OK
        data = answer[:-2]
        assert data[0] == DataTag.CARD_RECOGNITION_DATA & 0xFF
        assert data[1] == len(data) - 2


def test_reader_chosen_by_substring(served_card: ServedCard) -> None:
    with pcsc.PcscConnection("virtual pcd 00 0", timeout=10) as conn:
        # "Virtual PCD 00 01" matches too but has no card: the one with the card is chosen.
        assert conn.reader == served_card.reader
        assert conn.transmit(SELECT_ISD)[-2:] == OK
    with pytest.raises(TransportError, match="closed"):
        conn.transmit(SELECT_ISD)


def test_opensc_tool_sees_the_atr(served_card: ServedCard) -> None:
    with pcsc.PcscConnection(served_card.reader, timeout=10) as conn:
        atr = conn.atr
    index = _opensc_reader_index(served_card.reader)
    done = subprocess.run(
        ["opensc-tool", "--reader", str(index), "--atr"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert ":".join(f"{b:02x}" for b in atr) in done.stdout.lower()


def test_sigterm_stops_the_card_and_the_host_sees_it_leave(served_card: ServedCard) -> None:
    conn = pcsc.PcscConnection(served_card.reader, timeout=10)
    try:
        assert conn.transmit(SELECT_ISD)[-2:] == OK

        assert served_card.terminate(timeout=3.0) == 0, served_card.output()

        # CardRemovedError once pcscd has polled the reader, "transaction failed" before that.
        with pytest.raises(TransportError):
            conn.transmit(SELECT_ISD)
    finally:
        conn.close()
    with pytest.raises(TransportError, match="no card"):
        pcsc.PcscConnection(served_card.reader, timeout=1.0)
