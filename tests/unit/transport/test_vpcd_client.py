"""VpcdClient against a fake vpcd reader: a TCP server speaking vsmartcard's frame protocol."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from transport_fakes import FAKE_ATR, ScriptedCard

from iotid.transport.vpcd import (
    VPCD_DEFAULT_PORT,
    VpcdClient,
    VpcdControl,
    parse_endpoint,
    serve_forever,
)

SELECT = bytes.fromhex("00A4040008A000000151000000")
IO_TIMEOUT = 10.0  # generous: only hit when something is broken


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError("client closed the connection")
        buf += chunk
    return buf


class FakeReader:
    """The reader side of vpcd: listens, accepts the card, sends frames, reads answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(IO_TIMEOUT)
        self.port: int = self.server.getsockname()[1]

    def accept(self) -> socket.socket:
        conn, _ = self.server.accept()
        conn.settimeout(IO_TIMEOUT)
        return conn

    @staticmethod
    def send(conn: socket.socket, payload: bytes) -> None:
        conn.sendall(len(payload).to_bytes(2, "big") + payload)

    @staticmethod
    def recv(conn: socket.socket) -> bytes:
        size = int.from_bytes(_recv_exact(conn, 2), "big")
        return _recv_exact(conn, size)

    def control(self, conn: socket.socket, code: VpcdControl) -> None:
        self.send(conn, bytes([code]))

    def get_atr(self, conn: socket.socket) -> bytes:
        """Also a synchronisation point: earlier control messages have been handled."""
        self.control(conn, VpcdControl.GET_ATR)
        return self.recv(conn)

    @staticmethod
    def exchange(conn: socket.socket, apdu: bytes) -> bytes:
        FakeReader.send(conn, apdu)
        return FakeReader.recv(conn)

    def close(self) -> None:
        self.server.close()


class RunningClient:
    def __init__(self, client: VpcdClient, stop: threading.Event | None = None) -> None:
        self.client = client
        self.thread = threading.Thread(target=client.run, args=(stop,), daemon=True)
        self.thread.start()

    def stop(self) -> bool:
        """Stop; True when run() returned within a second."""
        self.client.stop()
        self.thread.join(timeout=1.0)
        return not self.thread.is_alive()


@pytest.fixture
def reader() -> Iterator[FakeReader]:
    r = FakeReader()
    yield r
    r.close()


@pytest.fixture
def running(card: ScriptedCard, reader: FakeReader) -> Iterator[RunningClient]:
    rc = RunningClient(VpcdClient(card, "127.0.0.1", reader.port, reconnect_delay=0.05))
    yield rc
    rc.stop()


def test_power_on_atr_and_apdus(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    conn = reader.accept()
    reader.control(conn, VpcdControl.POWER_ON)
    assert reader.get_atr(conn) == FAKE_ATR
    assert card.events == ["power_on"]
    assert running.client.connected

    assert reader.exchange(conn, SELECT) == b"R" + SELECT + b"\x90\x00"
    assert reader.exchange(conn, b"\x80\xca\x00\x66\x00") == b"R\x80\xca\x00\x66\x00\x90\x00"
    assert card.apdus == [SELECT, b"\x80\xca\x00\x66\x00"]
    conn.close()


def test_reset_power_off_and_unknown_control(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    conn = reader.accept()
    reader.control(conn, VpcdControl.POWER_ON)
    reader.control(conn, VpcdControl.RESET)
    reader.send(conn, b"\x03")  # not a vpcd control code: ignored, no answer
    reader.control(conn, VpcdControl.POWER_OFF)
    assert reader.get_atr(conn) == FAKE_ATR
    assert card.events == ["power_on", "reset", "power_off"]
    conn.close()


def test_a_frame_split_across_reads_is_reassembled(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    conn = reader.accept()
    frame = len(SELECT).to_bytes(2, "big") + SELECT
    conn.sendall(frame[:1])
    time.sleep(0.3)  # longer than the client's poll interval: a partial read must survive it
    conn.sendall(frame[1:7])
    time.sleep(0.3)
    conn.sendall(frame[7:])
    assert reader.recv(conn) == b"R" + SELECT + b"\x90\x00"
    conn.close()


def test_reader_disconnect_powers_off_and_client_reconnects(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    first = reader.accept()
    reader.control(first, VpcdControl.POWER_ON)
    assert reader.exchange(first, SELECT).endswith(b"\x90\x00")
    first.close()

    second = reader.accept()  # the client came back
    assert card.events[:3] == ["power_on", "process", "power_off"]
    reader.control(second, VpcdControl.POWER_ON)
    assert reader.get_atr(second) == FAKE_ATR
    assert reader.exchange(second, SELECT) == b"R" + SELECT + b"\x90\x00"
    assert card.events[-2:] == ["power_on", "process"]
    second.close()


def test_client_keeps_retrying_until_the_reader_listens(card: ScriptedCard) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on `port` now
    rc = RunningClient(VpcdClient(card, "127.0.0.1", port, reconnect_delay=0.05))
    try:
        time.sleep(0.3)  # a few refused attempts
        assert not rc.client.connected
        server = socket.create_server(("127.0.0.1", port))
        server.settimeout(IO_TIMEOUT)
        conn, _ = server.accept()
        conn.settimeout(IO_TIMEOUT)
        assert FakeReader.exchange(conn, SELECT).endswith(b"\x90\x00")
        conn.close()
        server.close()
    finally:
        assert rc.stop()


def test_stop_returns_promptly_when_connected_and_idle(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    conn = reader.accept()
    reader.control(conn, VpcdControl.POWER_ON)
    assert reader.get_atr(conn) == FAKE_ATR
    assert running.client.wait_connected(IO_TIMEOUT)

    assert running.stop()
    assert not running.client.connected
    assert card.events[-1] == "power_off"
    assert conn.recv(1) == b""  # the client closed its end
    conn.close()


def test_stop_returns_promptly_when_never_connected(card: ScriptedCard) -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    rc = RunningClient(VpcdClient(card, "127.0.0.1", port, reconnect_delay=30.0))
    time.sleep(0.2)  # inside the long reconnect delay
    assert rc.stop()
    assert card.events == []


def test_external_stop_event(card: ScriptedCard, reader: FakeReader) -> None:
    stop = threading.Event()
    rc = RunningClient(VpcdClient(card, "127.0.0.1", reader.port), stop)
    conn = reader.accept()
    assert reader.exchange(conn, SELECT).endswith(b"\x90\x00")
    stop.set()
    rc.thread.join(timeout=1.0)
    assert not rc.thread.is_alive()
    conn.close()


def test_card_exception_answers_6f00_and_the_loop_survives(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    conn = reader.accept()
    card.fail_with = RuntimeError("card bug")
    assert reader.exchange(conn, SELECT) == b"\x6f\x00"
    card.fail_with = None
    assert reader.exchange(conn, SELECT) == b"R" + SELECT + b"\x90\x00"
    conn.close()


@pytest.mark.parametrize("bad", [b"", b"\x90"])
def test_malformed_card_response_answers_6f00(
    card: ScriptedCard, reader: FakeReader, running: RunningClient, bad: bytes
) -> None:
    conn = reader.accept()
    card.response = bad
    assert reader.exchange(conn, SELECT) == b"\x6f\x00"
    conn.close()


def test_failing_power_control_does_not_kill_the_loop(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    def broken() -> bytes:
        raise OSError("power glitch")

    card.power_on = broken  # type: ignore[method-assign]
    conn = reader.accept()
    reader.control(conn, VpcdControl.POWER_ON)
    assert reader.get_atr(conn) == FAKE_ATR
    conn.close()


def test_card_without_atr_is_disconnected(
    card: ScriptedCard, reader: FakeReader, running: RunningClient
) -> None:
    card.atr_value = b""
    first = reader.accept()
    reader.control(first, VpcdControl.GET_ATR)
    with pytest.raises(ConnectionError):
        reader.recv(first)  # no empty frame: the client hangs up instead
    first.close()
    card.atr_value = FAKE_ATR
    second = reader.accept()
    assert reader.get_atr(second) == FAKE_ATR
    second.close()


def test_serve_forever_returns_0_on_sigterm_and_restores_handlers(
    card: ScriptedCard, reader: FakeReader
) -> None:
    before_term = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    served: list[bytes] = []

    def reader_side() -> None:
        conn = reader.accept()
        served.append(reader.exchange(conn, SELECT))
        os.kill(os.getpid(), signal.SIGTERM)
        conn.recv(1)  # wait for the client to hang up
        conn.close()

    side = threading.Thread(target=reader_side, daemon=True)
    side.start()
    assert serve_forever(card, "127.0.0.1", reader.port) == 0
    side.join(timeout=IO_TIMEOUT)
    assert served == [b"R" + SELECT + b"\x90\x00"]
    assert signal.getsignal(signal.SIGTERM) is before_term
    assert signal.getsignal(signal.SIGINT) is before_int
    assert card.events[-1] == "power_off"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:35963", ("127.0.0.1", 35963)),
        ("localhost:4000", ("localhost", 4000)),
        ("10.0.0.2", ("10.0.0.2", VPCD_DEFAULT_PORT)),
        (":35964", ("127.0.0.1", 35964)),
        ("[::1]:35963", ("::1", 35963)),
    ],
)
def test_parse_endpoint(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["host:0", "host:65536", "host:http", "host:-1"])
def test_parse_endpoint_rejects_bad_ports(text: str) -> None:
    with pytest.raises(ValueError, match="port"):
        parse_endpoint(text)
