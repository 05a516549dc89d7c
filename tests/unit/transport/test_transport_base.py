"""The transport contract: protocols, error hierarchy, TRAFFIC logging."""

from __future__ import annotations

import logging

import pytest
from transport_fakes import ScriptedCard

from iotid.transport import TRAFFIC, CardLike, Connection, LoopbackConnection, log_traffic
from iotid.transport.base import CardRemovedError, TransportError, logger


def test_traffic_level_is_registered_below_debug() -> None:
    assert TRAFFIC == 3 < logging.DEBUG
    assert logging.getLevelName(TRAFFIC) == "TRAFFIC"
    assert logger.name == "iotid.transport"


def test_card_removed_is_a_transport_error() -> None:
    assert issubclass(CardRemovedError, TransportError)
    assert not issubclass(TransportError, CardRemovedError)


def test_scripted_card_and_loopback_satisfy_the_protocols(card: ScriptedCard) -> None:
    assert isinstance(card, CardLike)
    conn = LoopbackConnection(card)
    assert isinstance(conn, Connection)
    conn.close()


def test_apdu_hex_appears_only_at_traffic_level(caplog: pytest.LogCaptureFixture) -> None:
    apdu = bytes.fromhex("00A4040008A000000151000000")
    with caplog.at_level(logging.DEBUG, logger="iotid.transport"):
        log_traffic(">>", apdu)
    assert apdu.hex().upper() not in caplog.text

    with caplog.at_level(TRAFFIC, logger="iotid.transport"):
        log_traffic(">>", apdu)
    records = [r for r in caplog.records if apdu.hex().upper() in r.getMessage()]
    assert [r.levelname for r in records] == ["TRAFFIC"]
    assert records[0].name == "iotid.transport"
