"""LoopbackConnection: power sequencing, pass-through, errors after close."""

from __future__ import annotations

import logging

import pytest
from transport_fakes import FAKE_ATR, ScriptedCard

from iotid.transport import TRAFFIC, LoopbackConnection, TransportError

SELECT = bytes.fromhex("00A4040008A000000151000000")


def test_construction_powers_the_card_on(card: ScriptedCard) -> None:
    conn = LoopbackConnection(card)
    assert card.events == ["power_on"]
    assert conn.atr == FAKE_ATR


def test_transmit_hands_the_bytes_to_process(card: ScriptedCard) -> None:
    conn = LoopbackConnection(card)
    assert conn.transmit(SELECT) == b"R" + SELECT + b"\x90\x00"
    assert conn.transmit(bytearray(b"\x80\xca\x00\x66")) == b"R\x80\xca\x00\x66\x90\x00"
    assert card.apdus == [SELECT, b"\x80\xca\x00\x66"]
    assert all(type(a) is bytes for a in card.apdus)


def test_status_words_are_returned_not_raised(card: ScriptedCard) -> None:
    card.response = b"\x6a\x82"
    conn = LoopbackConnection(card)
    assert conn.transmit(SELECT) == b"\x6a\x82"


def test_close_powers_off_once_and_later_transmit_fails(card: ScriptedCard) -> None:
    conn = LoopbackConnection(card)
    conn.close()
    conn.close()
    assert card.events == ["power_on", "power_off"]
    assert conn.closed
    with pytest.raises(TransportError, match="closed"):
        conn.transmit(SELECT)
    assert card.apdus == []


def test_context_manager_closes(card: ScriptedCard) -> None:
    with LoopbackConnection(card) as conn:
        conn.transmit(SELECT)
    assert card.events[-1] == "power_off"
    with pytest.raises(TransportError):
        conn.transmit(SELECT)


def test_a_card_that_raises_becomes_a_transport_error(card: ScriptedCard) -> None:
    card.fail_with = KeyError("boom")
    conn = LoopbackConnection(card)
    with pytest.raises(TransportError, match="KeyError") as caught:
        conn.transmit(SELECT)
    assert isinstance(caught.value.__cause__, KeyError)
    card.fail_with = None
    assert conn.transmit(SELECT).endswith(b"\x90\x00")  # still usable


@pytest.mark.parametrize("response", [b"", b"\x90"])
def test_a_response_without_status_word_is_a_transport_error(
    card: ScriptedCard, response: bytes
) -> None:
    card.response = response
    with pytest.raises(TransportError, match="malformed"):
        LoopbackConnection(card).transmit(SELECT)


def test_empty_command_is_refused(card: ScriptedCard) -> None:
    with pytest.raises(ValueError, match="empty"):
        LoopbackConnection(card).transmit(b"")
    assert card.apdus == []


def test_repr_names_no_bytes(card: ScriptedCard) -> None:
    conn = LoopbackConnection(card)
    assert repr(conn) == "LoopbackConnection(ScriptedCard, open)"


def test_apdus_are_logged_at_traffic(card: ScriptedCard, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(TRAFFIC, logger="iotid.transport"):
        LoopbackConnection(card).transmit(SELECT)
    traffic = [r.getMessage() for r in caplog.records if r.levelno == TRAFFIC]
    assert traffic == [">> " + SELECT.hex().upper(), "<< " + (b"R" + SELECT).hex().upper() + "9000"]
    assert all(
        r.levelno == TRAFFIC for r in caplog.records if SELECT.hex().upper() in r.getMessage()
    )
    assert not any(
        SELECT.hex().upper() in r.getMessage() for r in caplog.records if r.levelno >= logging.DEBUG
    )
