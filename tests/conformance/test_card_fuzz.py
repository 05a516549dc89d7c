"""Property tests (hypothesis) of the card OS and the ISD against malformed and hostile APDUs.

Scope: sequences of random bytes, valid headers with bad Lc/Le (ISO 7816-4 section 5.1), unknown
CLA/INS, truncated BER-TLV / DGI bodies of GET STATUS, DELETE and STORE DATA inside a session,
wrapped commands with one byte changed, replayed wrapped commands (GPC 2.3.1 Amd D section 6.2.4:
the MAC chain makes a replay fail), and GP commands before authentication (6982). Every APDU goes
through :class:`CheckedCard`, which asserts for every answer: at least SW1 SW2, SW1 in the ISO
ranges, no data with an error status word, never an exception and never 6F00 (the card's
"internal error"), and an error status word leaves the NVM byte-identical.

Not covered: the exact status word of each error (tests/unit/se/test_isd_negative.py), tearing
(kill -9) tests of the NVM, interoperability (test_yubikit_interop.py).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotid.apdu import ApduFormatError, CommandApdu, tlv
from iotid.host import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.spec import gp
from iotid.spec.gp import DataTag, GpIns
from iotid.spec.iso7816 import CLA_CHAINING, SW, Ins, is_success
from iotid.transport.loopback import LoopbackConnection

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TEST_KEYS = StaticKeys.gp_test_keys()
UID = bytes.fromhex("0102030405060708090A")
VALID_SW1 = frozenset(
    {0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6E, 0x6F, 0x90}
)
LEVELS = sorted(lvl for lvl in gp.VALID_SECURITY_LEVELS if lvl)
ALL_INS = sorted({int(i) for i in GpIns} | {int(i) for i in Ins})
#: CLA bits b4 and b6: not part of any GP secure messaging CLA ('84'-'87', 'E0'-'EF').
CLA_B4 = 0x08
CLA_B6 = 0x20
#: GP commands that need an authenticated session (GPC 2.3.1 section 10.6, Table 10-1 and ours).
GUARDED_INS = (
    GpIns.PUT_KEY,
    GpIns.DELETE,
    GpIns.GET_STATUS,
    GpIns.SET_STATUS,
    GpIns.INSTALL,
    GpIns.STORE_DATA,
)


def nvm_snapshot(card: Card) -> dict[str, bytes | None]:
    return {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")}


def is_ok_family(sw: int) -> bool:
    """9000, 61xx (more data), 62xx/63xx (warnings): everything else is an error."""
    return is_success(sw) or sw >> 8 == 0x61


class CheckedCard:
    """A ``CardLike`` proxy over a real card that checks the invariants on every answer."""

    def __init__(self, card: Card) -> None:
        self.card = card

    @property
    def atr(self) -> bytes:
        return self.card.atr

    def power_on(self) -> bytes:
        return self.card.power_on()

    def reset(self) -> bytes:
        return self.card.reset()

    def power_off(self) -> None:
        self.card.power_off()

    def process(self, apdu: bytes) -> bytes:
        before = nvm_snapshot(self.card)
        resp = self.card.process(apdu)  # an exception here fails the property
        assert isinstance(resp, bytes)
        assert len(resp) >= 2, f"answer without a status word to {apdu.hex()}"
        sw1, sw2 = resp[-2], resp[-1]
        sw = (sw1 << 8) | sw2
        assert sw1 in VALID_SW1, f"SW {sw:04X} to {apdu.hex()}"
        if sw1 == 0x90:
            assert sw2 == 0x00
        assert sw != SW.UNKNOWN, f"6F00 (internal error) to {apdu.hex()}"
        try:
            cmd: CommandApdu | None = CommandApdu.parse(apdu)
        except ApduFormatError:
            cmd = None
            assert resp == SW.WRONG_LENGTH.to_bytes(2, "big"), (
                f"{resp.hex()} to unparseable {apdu.hex()}"
            )
        if cmd is not None:
            # ISO 7816-4 section 5.1: never more than Le (absent Le: 256 short, 65536 extended).
            limit = cmd.le or (65536 if cmd.extended else 256)
            assert len(resp) - 2 <= limit, f"{len(resp) - 2} bytes for Le {limit}"
        if not is_ok_family(sw):
            assert len(resp) == 2, f"data with error SW {sw:04X}"
            assert nvm_snapshot(self.card) == before, (
                f"NVM changed by {apdu.hex()} answered {sw:04X}"
            )
        return resp

    def send(self, apdu: bytes) -> int:
        return int.from_bytes(self.process(apdu)[-2:], "big")


def new_card() -> CheckedCard:
    return CheckedCard(Card.create(None, uid=UID))


def open_session(checked: CheckedCard, level: int = 0x33) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(checked))
    sd.authenticate(TEST_KEYS, level=level)
    return sd


def assert_card_still_usable(checked: CheckedCard) -> None:
    """After any abuse: the test keys open a session; key sets and life cycle are intact."""
    sd = open_session(checked)
    assert sd.get_key_information() == {(kid, 0x30): (gp.KeyType.AES, 16) for kid in (1, 2, 3)}
    assert checked.card.card_life_cycle == gp.CardLifeCycle.OP_READY


# -- strategies -----------------------------------------------------------------------------------

bytes_ = st.integers(0, 255)
interesting_cla = (
    st.sampled_from([0x00, 0x04, 0x10, 0x14, 0x80, 0x84, 0x90, 0x94, 0x01, 0x81, 0x40, 0xC0, 0xFF])
    | bytes_
)
interesting_ins = st.sampled_from(ALL_INS) | bytes_
header = st.tuples(interesting_cla, interesting_ins, bytes_, bytes_).map(bytes)

random_apdu = st.binary(min_size=0, max_size=300)


@st.composite
def bad_length_apdu(draw: st.DrawFn) -> bytes:
    """A header followed by a body whose Lc/Le coding does not match (ISO 7816-4 section 5.1)."""
    head = draw(header)
    kind = draw(st.sampled_from(["short", "ext_truncated", "ext_zero_lc", "ext_mismatch"]))
    if kind == "short":
        lc = draw(st.integers(1, 255))
        n = draw(st.integers(0, 260).filter(lambda n: n not in (lc, lc + 1)))
        return head + bytes([lc]) + draw(st.binary(min_size=n, max_size=n))
    if kind == "ext_truncated":
        return head + b"\x00" + draw(st.binary(min_size=1, max_size=1))
    if kind == "ext_zero_lc":
        return head + b"\x00\x00\x00" + draw(st.binary(min_size=1, max_size=40))
    lc = draw(st.integers(1, 600))
    n = draw(st.integers(0, 620).filter(lambda n: n not in (lc, lc + 2)))
    return head + b"\x00" + lc.to_bytes(2, "big") + draw(st.binary(min_size=n, max_size=n))


@st.composite
def well_formed_apdu(draw: st.DrawFn) -> bytes:
    """Any CLA/INS/P1/P2, correctly coded lengths, random data and Le (short or extended)."""
    cla, ins, p1, p2 = draw(header)
    extended = draw(st.booleans())
    data = draw(st.binary(max_size=300 if extended else 255))
    le = draw(st.none() | st.integers(1, 65536 if extended else 256))
    return CommandApdu(cla, ins, p1, p2, data, le, extended=extended or len(data) > 255).encode()


any_apdu = st.one_of(random_apdu, bad_length_apdu(), well_formed_apdu())
sequence = st.lists(st.one_of(any_apdu, st.just(b"RESET")), min_size=1, max_size=12)


def run(checked: CheckedCard, apdus: list[bytes]) -> None:
    for apdu in apdus:
        if apdu == b"RESET":
            checked.power_on()
        else:
            checked.process(apdu)


# -- properties -----------------------------------------------------------------------------------


@FUZZ
@given(apdus=sequence)
def test_random_sequences_outside_a_session(apdus: list[bytes]) -> None:
    checked = new_card()
    run(checked, apdus)
    assert_card_still_usable(checked)


@FUZZ
@given(level=st.sampled_from(LEVELS), apdus=sequence)
def test_random_sequences_inside_a_session(level: int, apdus: list[bytes]) -> None:
    checked = new_card()
    open_session(checked, level)
    run(checked, apdus)
    assert_card_still_usable(checked)


@FUZZ
@given(
    cla=st.integers(0, 255).filter(
        lambda c: c not in (0x00, 0x80, 0x84, 0x04) and not c & CLA_CHAINING
    ),
    ins=bytes_,
    p1=bytes_,
    p2=bytes_,
)
def test_unknown_cla_or_ins(cla: int, ins: int, p1: int, p2: int) -> None:
    checked = new_card()
    sw = checked.send(bytes([cla, ins, p1, p2, 0x00]))
    assert not is_ok_family(sw)
    # Unknown instructions in the GP and interindustry classes are refused too.
    if ins not in ALL_INS:
        assert checked.send(bytes([0x80, ins, p1, p2, 0x00])) == SW.INS_NOT_SUPPORTED
    assert_card_still_usable(checked)


@st.composite
def truncated_body(draw: st.DrawFn) -> tuple[int, int, int, bytes]:
    """(INS, P1, P2, data): a GET STATUS / DELETE / STORE DATA body cut inside its last TLV/DGI."""
    which = draw(st.sampled_from(["get_status", "delete", "store_ber", "store_dgi"]))
    value = draw(st.binary(min_size=0, max_size=300))
    if which == "get_status":
        ins, p1, p2 = GpIns.GET_STATUS, gp.GET_STATUS_APPS, gp.GET_STATUS_TAGGED
        body = tlv(gp.TAG_AID, value[:16])
    elif which == "delete":
        ins, p1, p2 = GpIns.DELETE, 0x00, 0x00
        body = tlv(gp.TAG_DELETE_KEY_VERSION, value[:1] or b"\x30")
    elif which == "store_ber":
        ins, p1, p2 = GpIns.STORE_DATA, gp.STORE_LAST_BLOCK | gp.STORE_FORMAT_BER, 0x00
        body = tlv(draw(st.sampled_from([DataTag.IIN, DataTag.CIN])), value[:200])
    else:
        ins, p1, p2 = GpIns.STORE_DATA, gp.STORE_LAST_BLOCK | gp.STORE_FORMAT_DGI, 0x00
        v = value[:200]
        length = bytes([len(v)]) if len(v) < 0xFF else b"\xff" + len(v).to_bytes(2, "big")
        body = draw(st.sampled_from([gp.IsdDgi.IIN, gp.IsdDgi.CIN])).to_bytes(2, "big") + length + v
    cut = draw(st.integers(1, len(body) - 1))
    return ins, p1, p2, body[:cut]


@FUZZ
@given(level=st.sampled_from(LEVELS), case=truncated_body())
def test_truncated_tlv_bodies_in_a_session(level: int, case: tuple[int, int, int, bytes]) -> None:
    ins, p1, p2, body = case
    checked = new_card()
    sd = open_session(checked, level)
    resp = sd.protocol.send(CommandApdu(0x80, ins, p1, p2, body, 256))
    assert resp.sw == SW.WRONG_DATA
    # Not a security error: the session goes on.
    assert sd.get_data(DataTag.KEY_INFORMATION)
    assert_card_still_usable(checked)


def plain_commands() -> st.SearchStrategy[CommandApdu]:
    get_data = st.sampled_from(
        [
            DataTag.CPLC,
            DataTag.KEY_INFORMATION,
            DataTag.CARD_RECOGNITION_DATA,
            DataTag.SEQUENCE_COUNTER,
        ]
    ).map(lambda t: CommandApdu(0x80, GpIns.GET_DATA, t >> 8, t & 0xFF, b"", 256))
    get_status = st.just(
        CommandApdu(
            0x80,
            GpIns.GET_STATUS,
            gp.GET_STATUS_ISD,
            gp.GET_STATUS_TAGGED,
            tlv(gp.TAG_AID, b""),
            256,
        )
    )
    store = st.tuples(
        st.sampled_from([DataTag.IIN, DataTag.CIN]), st.binary(min_size=1, max_size=300)
    ).map(
        lambda tv: CommandApdu(
            0x80,
            GpIns.STORE_DATA,
            gp.STORE_LAST_BLOCK | gp.STORE_FORMAT_BER,
            0x00,
            tlv(tv[0], tv[1]),
            extended=len(tlv(tv[0], tv[1])) > 255,
        )
    )
    return st.one_of(get_data, get_status, store)


@FUZZ
@given(level=st.sampled_from(LEVELS), cmd=plain_commands(), data=st.data())
def test_wrong_mac_inside_a_session(level: int, cmd: CommandApdu, data: st.DataObject) -> None:
    checked = new_card()
    sd = open_session(checked, level)
    channel = sd.protocol.channel
    assert channel is not None
    wrapped = channel.wrap_command(cmd)
    raw = wrapped.encode()
    # Change one byte of header, Lc or data (Le is outside the C-MAC, Amd D section 6.2.4).
    le_len = len(raw) - len(wrapped.header() + wrapped.lc_field() + wrapped.data)
    pos = data.draw(st.integers(0, len(raw) - le_len - 1), label="pos")
    delta = data.draw(st.integers(1, 255), label="delta")
    if pos == 0:
        # Setting CLA b5 makes it the first link of a chain, which ISO answers 9000 unexecuted.
        delta &= ~CLA_CHAINING
        if not delta:
            delta = 0x01
    mutated = raw[:pos] + bytes([raw[pos] ^ delta]) + raw[pos + 1 :]
    sw = checked.send(mutated)
    assert not is_ok_family(sw), f"mutated byte {pos} accepted"
    # The next correctly wrapped command of the host is refused as well (Amd D section 5.6, or
    # the MAC chain no longer matches).
    assert sd.protocol.send(CommandApdu(0x80, GpIns.GET_DATA, 0x00, 0xE0, b"", 256)).sw == (
        SW.SECURITY_STATUS_NOT_SATISFIED
    )
    assert_card_still_usable(checked)


@FUZZ
@given(level=st.sampled_from(LEVELS), cmd=plain_commands())
def test_replayed_wrapped_command_is_refused(level: int, cmd: CommandApdu) -> None:
    checked = new_card()
    sd = open_session(checked, level)
    channel = sd.protocol.channel
    assert channel is not None
    raw = channel.wrap_command(cmd).encode()
    first = checked.process(raw)
    assert is_ok_family(int.from_bytes(first[-2:], "big"))
    # The same bytes again: the MAC chain has moved on.
    assert checked.send(raw) == SW.SECURITY_STATUS_NOT_SATISFIED
    # And the session is gone (Amd D section 5.6).
    assert checked.send(bytes.fromhex("00CA006600")) == SW.SECURITY_STATUS_NOT_SATISFIED
    assert_card_still_usable(checked)


@FUZZ
@given(
    prelude=st.sampled_from(["fresh", "reselected", "reset", "aborted", "failed_auth"]),
    ins=st.sampled_from(GUARDED_INS),
    cla=st.sampled_from([0x80, 0x84]),
    p1=bytes_,
    p2=bytes_,
    payload=st.binary(max_size=300),
    le=st.none() | st.just(256),
)
def test_gp_commands_before_authentication(
    prelude: str, ins: int, cla: int, p1: int, p2: int, payload: bytes, le: int | None
) -> None:
    checked = new_card()
    if prelude != "fresh":
        open_session(checked)
        if prelude == "reselected":
            checked.send(bytes([0x00, Ins.SELECT, 0x04, 0x00, len(gp.ISD_AID)]) + gp.ISD_AID)
        elif prelude == "reset":
            checked.power_on()
        elif prelude == "aborted":
            checked.send(bytes.fromhex("84CA0066 08 0000000000000000"))
        else:
            checked.send(bytes.fromhex("8050000008 0102030405060708 00"))
            checked.send(bytes.fromhex("8482330010") + bytes(16))
    cmd = CommandApdu(cla, ins, p1, p2, payload, le, extended=len(payload) > 255)
    assert checked.send(cmd.encode()) == SW.SECURITY_STATUS_NOT_SATISFIED
    assert_card_still_usable(checked)


@pytest.mark.parametrize("bit", [CLA_B4, CLA_B6])
def test_wrapped_command_with_undefined_cla_bits_is_refused(bit: int) -> None:
    checked = new_card()
    sd = open_session(checked)
    channel = sd.protocol.channel
    assert channel is not None
    store_iin = CommandApdu(
        0x80,
        GpIns.STORE_DATA,
        gp.STORE_LAST_BLOCK | gp.STORE_FORMAT_BER,
        0x00,
        tlv(DataTag.IIN, b"\x01"),
    )
    raw = channel.wrap_command(store_iin).encode()
    sw = checked.send(bytes([raw[0] ^ bit]) + raw[1:])
    assert checked.card.nvm.get("app/isd/iin") is None
    assert not is_ok_family(sw)
