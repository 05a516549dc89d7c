"""The host protocol stack against scripted connections: 61xx, 6Cxx, chaining, extended length."""

from __future__ import annotations

import pytest

from iotid.apdu import ApduError
from iotid.host import BadResponseError, SmartCardProtocol


class Scripted:
    """A Connection that records what it is sent and answers from a script."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sent: list[bytes] = []

    @property
    def atr(self) -> bytes:
        return b"\x3b\x00"

    def transmit(self, apdu: bytes) -> bytes:
        self.sent.append(apdu)
        return self.answers.pop(0)

    def close(self) -> None:
        pass


def test_61xx_is_followed_with_get_response() -> None:
    conn = Scripted([b"A" * 256 + b"\x61\x10", b"B" * 16 + b"\x90\x00"])
    data = SmartCardProtocol(conn).transmit(0x00, 0xCA, 0x00, 0x45)
    assert data == b"A" * 256 + b"B" * 16
    assert conn.sent[1] == bytes.fromhex("00C0000010")


def test_6cxx_reissues_with_exact_le() -> None:
    conn = Scripted([b"\x6c\x2a", b"C" * 42 + b"\x90\x00"])
    data = SmartCardProtocol(conn).transmit(0x80, 0xCA, 0x9F, 0x7F, le=256)
    assert data == b"C" * 42
    assert conn.sent[1] == bytes.fromhex("80CA9F7F2A")


def test_short_mode_chains_long_commands() -> None:
    conn = Scripted([b"\x90\x00"] * 3)
    SmartCardProtocol(conn).transmit(0x80, 0xE2, 0x00, 0x00, bytes(600))
    assert [a[0] for a in conn.sent] == [0x90, 0x90, 0x80]
    assert [a[4] for a in conn.sent] == [255, 255, 90]


def test_chain_stops_at_first_error() -> None:
    conn = Scripted([b"\x6a\x80"])
    with pytest.raises(ApduError) as err:
        SmartCardProtocol(conn).transmit(0x80, 0xE2, 0x00, 0x00, bytes(600))
    assert err.value.sw == 0x6A80
    assert len(conn.sent) == 1


def test_extended_mode_sends_one_extended_apdu() -> None:
    conn = Scripted([b"\x90\x00"])
    SmartCardProtocol(conn, extended=True).transmit(0x80, 0xE2, 0x00, 0x00, bytes(600))
    assert conn.sent[0][:7] == bytes.fromhex("80E20000000258")


def test_endless_61xx_is_a_bad_response() -> None:
    class Endless(Scripted):
        def transmit(self, apdu: bytes) -> bytes:
            return b"x\x61\x01"

    with pytest.raises(BadResponseError):
        SmartCardProtocol(Endless([])).transmit(0x00, 0xCA, 0x00, 0x45)


def test_one_byte_answer_is_a_bad_response() -> None:
    with pytest.raises(BadResponseError):
        SmartCardProtocol(Scripted([b"\x90"])).transmit(0x00, 0xCA, 0x00, 0x45)
