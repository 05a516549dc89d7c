"""PcscConnection without pcscd: reader choice, waiting, and the pyscard error mapping.

pyscard's reader and connection classes are replaced by fakes; the real stack is exercised in
tests/e2e/test_pcsc_stack.py.
"""

from __future__ import annotations

from typing import Any

import pytest

pcsc = pytest.importorskip("iotid.transport.pcsc", reason="pyscard/libpcsclite not available")

from smartcard import scard  # noqa: E402
from smartcard.Exceptions import CardConnectionException, NoCardException  # noqa: E402
from smartcard.pcsc.PCSCExceptions import EstablishContextException  # noqa: E402

from iotid.transport.base import CardRemovedError, Connection, TransportError  # noqa: E402

ATR = [0x3B, 0x80, 0x80, 0x01, 0x01]
SELECT = bytes.fromhex("00A4040008A000000151000000")


class FakePyscardConnection:
    def __init__(self, reader: str, world: World) -> None:
        self.reader = reader
        self.world = world
        self.disposition: int | None = None
        self.calls: list[str] = []
        self.fail_with: Exception | None = None
        world.connections.append(self)

    def connect(self) -> None:
        self.calls.append("connect")
        if self.reader not in self.world.cards:
            raise NoCardException("Unable to connect", hresult=scard.SCARD_E_NO_SMARTCARD)
        self.disposition = scard.SCARD_UNPOWER_CARD

    def getATR(self) -> list[int]:
        return ATR

    def transmit(self, command: list[int]) -> tuple[list[int], int, int]:
        self.calls.append("transmit")
        if self.fail_with is not None:
            raise self.fail_with
        return [0xAA, *command[:2]], 0x90, 0x00

    def reconnect(self, disposition: int | None = None) -> None:
        self.calls.append(f"reconnect:{disposition}")
        self.disposition = disposition

    def disconnect(self) -> None:
        self.calls.append(f"disconnect:{self.disposition}")

    def release(self) -> None:
        self.calls.append("release")


class World:
    """The readers pcscd would report, and which of them hold a card."""

    def __init__(self) -> None:
        self.readers: list[str] = ["Virtual PCD 00 00", "Virtual PCD 00 01"]
        self.cards: set[str] = set()
        self.connections: list[FakePyscardConnection] = []
        self.list_error: Exception | None = None

    def list(self) -> list[str]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.readers)

    def reader_class(self) -> Any:
        world = self

        class FakeReader:
            def __init__(self, name: str) -> None:
                self.name = name

            def createConnection(self) -> FakePyscardConnection:
                return FakePyscardConnection(self.name, world)

        return FakeReader


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    w = World()
    monkeypatch.setattr(pcsc, "_pyscard_readers", w.list)
    monkeypatch.setattr(pcsc, "PCSCReader", w.reader_class())
    return w


def test_list_readers(world: World) -> None:
    assert pcsc.list_readers() == ["Virtual PCD 00 00", "Virtual PCD 00 01"]


def test_list_readers_without_pcscd_is_a_transport_error(world: World) -> None:
    world.list_error = EstablishContextException(scard.SCARD_E_NO_SERVICE)
    with pytest.raises(TransportError, match="unavailable"):
        pcsc.list_readers()


@pytest.mark.parametrize("wanted", [None, "", "virtual", "PCD 00 01", "Virtual PCD 00 01"])
def test_reader_choice_takes_the_matching_reader_with_a_card(
    world: World, wanted: str | None
) -> None:
    world.cards = {"Virtual PCD 00 01"}
    conn = pcsc.PcscConnection(wanted, timeout=0)
    assert isinstance(conn, Connection)
    assert conn.reader == "Virtual PCD 00 01"
    assert conn.atr == bytes(ATR)
    # the empty reader was tried first (when it matched) and its context released
    tried = [c for c in world.connections if c.reader == "Virtual PCD 00 00"]
    assert all(c.calls == ["connect", "release"] for c in tried)


def test_exact_name_wins_over_substring(world: World) -> None:
    world.readers = ["Reader A 00 00", "Reader A 00 00 extra"]
    world.cards = set(world.readers)
    assert pcsc.PcscConnection("Reader A 00 00", timeout=0).reader == "Reader A 00 00"
    assert pcsc.PcscConnection("extra", timeout=0).reader == "Reader A 00 00 extra"


def test_no_matching_reader(world: World) -> None:
    with pytest.raises(TransportError, match="no reader matches 'Gemalto'"):
        pcsc.PcscConnection("Gemalto", timeout=0)


def test_no_card_within_timeout(world: World) -> None:
    with pytest.raises(TransportError, match="no card within") as caught:
        pcsc.PcscConnection("Virtual PCD 00 00", timeout=0.25)
    assert "no card in 'Virtual PCD 00 00'" in str(caught.value)
    assert len(world.connections) >= 2  # it kept polling


def test_transmit_converts_to_and_from_bytes(world: World) -> None:
    world.cards = {"Virtual PCD 00 00"}
    conn = pcsc.PcscConnection(timeout=0)
    assert conn.transmit(SELECT) == b"\xaa\x00\xa4\x90\x00"


@pytest.mark.parametrize(
    "hresult",
    [scard.SCARD_W_REMOVED_CARD, scard.SCARD_E_NO_SMARTCARD, scard.SCARD_W_UNPOWERED_CARD],
)
def test_removal_maps_to_card_removed(world: World, hresult: int) -> None:
    world.cards = {"Virtual PCD 00 00"}
    conn = pcsc.PcscConnection(timeout=0)
    world.connections[-1].fail_with = CardConnectionException("gone", hresult=hresult)
    with pytest.raises(CardRemovedError):
        conn.transmit(SELECT)


def test_other_failures_map_to_transport_error(world: World) -> None:
    world.cards = {"Virtual PCD 00 00"}
    conn = pcsc.PcscConnection(timeout=0)
    world.connections[-1].fail_with = CardConnectionException(
        "failed", hresult=scard.SCARD_E_NOT_TRANSACTED
    )
    with pytest.raises(TransportError) as caught:
        conn.transmit(SELECT)
    assert type(caught.value) is TransportError
    assert isinstance(caught.value.__cause__, CardConnectionException)


def test_reset_by_another_application_reattaches_and_keeps_unpower_on_close(
    world: World,
) -> None:
    world.cards = {"Virtual PCD 00 00"}
    conn = pcsc.PcscConnection(timeout=0)
    fake = world.connections[-1]
    fake.fail_with = CardConnectionException("reset", hresult=scard.SCARD_W_RESET_CARD)
    with pytest.raises(TransportError, match="reset by another application"):
        conn.transmit(SELECT)
    assert f"reconnect:{scard.SCARD_LEAVE_CARD}" in fake.calls
    fake.fail_with = None
    assert conn.transmit(SELECT).endswith(b"\x90\x00")
    conn.close()
    assert fake.calls[-2:] == [f"disconnect:{scard.SCARD_UNPOWER_CARD}", "release"]


def test_close_is_idempotent_and_final(world: World) -> None:
    world.cards = {"Virtual PCD 00 00"}
    with pcsc.PcscConnection(timeout=0) as conn:
        pass
    conn.close()
    fake = world.connections[-1]
    assert fake.calls.count("release") == 1
    with pytest.raises(TransportError, match="closed"):
        conn.transmit(SELECT)
    assert "transmit" not in fake.calls
