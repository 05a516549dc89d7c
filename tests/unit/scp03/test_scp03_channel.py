"""SecureChannel host <-> card behaviour (iotid.scp03.channel): round trips, lengths, failures."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotid.apdu import CommandApdu, split_chain
from iotid.crypto import aes_cbc_encrypt, aes_cmac, aes_encrypt_block
from iotid.scp03 import (
    MacError,
    ScpError,
    ScpFormatError,
    SecureChannel,
    SessionKeys,
    StaticKeys,
    derive_session_keys,
    host_cryptogram,
)

LEVELS = [0x01, 0x03, 0x11, 0x13, 0x33]
KEY_BYTES = [16, 24, 32]


@dataclass
class Pair:
    host: SecureChannel
    card: SecureChannel
    keys: SessionKeys


def make_pair(level: int, key_bytes: int = 16) -> Pair:
    static = StaticKeys(os.urandom(key_bytes), os.urandom(key_bytes), os.urandom(key_bytes))
    host_challenge, card_challenge = os.urandom(8), os.urandom(8)
    keys = derive_session_keys(static, host_challenge, card_challenge)
    host, card = SecureChannel(keys, level), SecureChannel(keys, level)
    cryptogram = host_cryptogram(keys.s_mac, host_challenge, card_challenge)
    ea = host.external_authenticate_command(cryptogram)
    assert ea.header() == bytes((0x84, 0x82, level, 0x00)) and len(ea.data) == 16
    assert card.verify_external_authenticate(CommandApdu.parse(ea.encode())) == cryptogram
    assert host.mac_chain == card.mac_chain != bytes(16)
    return Pair(host, card, keys)


def over_the_wire(cmd: CommandApdu) -> CommandApdu:
    return CommandApdu.parse(cmd.encode())


def exchange(pair: Pair, cmd: CommandApdu, response: bytes, sw: int = 0x9000, **kw: bool) -> bytes:
    """Host wraps, card unwraps and answers, host unwraps; returns what the host got."""
    wrapped = pair.host.wrap_command(cmd, **kw)
    plain = pair.card.unwrap_command(over_the_wire(wrapped))
    assert (plain.cla, plain.ins, plain.p1, plain.p2) == (cmd.cla, cmd.ins, cmd.p1, cmd.p2)
    assert plain.data == cmd.data
    assert plain.le == cmd.le
    assert pair.host.mac_chain == pair.card.mac_chain
    assert pair.host.encryption_counter == pair.card.encryption_counter
    return pair.host.unwrap_response(pair.card.wrap_response(response, sw), sw)


COMMANDS = {
    "case1": CommandApdu(0x80, 0xF2, 0x20, 0x02),
    "case2": CommandApdu(0x80, 0xCA, 0x00, 0x66, le=256),
    "case3-1": CommandApdu(0x80, 0xE2, 0x90, 0x00, data=b"\x01"),
    "case3-16": CommandApdu(0x80, 0xE2, 0x90, 0x00, data=bytes(range(16))),
    "case4-200": CommandApdu(0x80, 0xE2, 0x90, 0x00, data=os.urandom(200), le=256),
    "case3-240": CommandApdu(0x80, 0xE2, 0x90, 0x00, data=os.urandom(240)),  # > 255 once padded
    "case3-255": CommandApdu(0x80, 0xE2, 0x90, 0x00, data=os.urandom(255)),
    "extended-small": CommandApdu(0x80, 0xE2, 0x90, 0x00, data=b"abc", extended=True),
    "extended-long": CommandApdu(
        0x80, 0xE2, 0x90, 0x00, data=os.urandom(1000), le=65536, extended=True
    ),
    "interindustry": CommandApdu(0x00, 0xCA, 0x00, 0x42, le=256),
    "channel-2": CommandApdu(0x82, 0xE2, 0x90, 0x00, data=b"\x42" * 20),
}


@pytest.mark.parametrize("key_bytes", KEY_BYTES)
@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(COMMANDS))
def test_round_trip(level: int, key_bytes: int, name: str) -> None:
    pair = make_pair(level, key_bytes)
    cmd = COMMANDS[name]
    for response in (b"", b"\x90", os.urandom(16), os.urandom(300)):
        assert exchange(pair, cmd, response) == response


@pytest.mark.parametrize("level", LEVELS)
def test_wire_format(level: int) -> None:
    pair = make_pair(level)
    wrapped = pair.host.wrap_command(CommandApdu(0x80, 0xE2, 0x90, 0x00, data=bytes(10)))
    assert wrapped.cla == 0x84
    assert not wrapped.extended
    expected = (16 if level & 0x02 else 10) + 8
    assert len(wrapped.data) == expected
    assert wrapped.lc_field() == bytes((expected,))
    # Independent C-MAC computation (Amd D §6.2.4) over the chain before this command.
    card_chain = pair.card.mac_chain
    mac_input = card_chain + bytes((0x84, 0xE2, 0x90, 0x00, expected)) + wrapped.data[:-8]
    assert wrapped.data[-8:] == aes_cmac(pair.keys.s_mac, mac_input)[:8]
    pair.card.unwrap_command(wrapped)
    assert pair.card.mac_chain == aes_cmac(pair.keys.s_mac, mac_input)


@pytest.mark.parametrize("level", [0x01, 0x03, 0x33])
def test_long_data_switches_to_extended_length(level: int) -> None:
    pair = make_pair(level)
    wrapped = pair.host.wrap_command(CommandApdu(0x80, 0xE2, 0x90, 0x00, data=bytes(250)))
    assert wrapped.extended
    total = len(wrapped.data)
    assert total > 255
    assert wrapped.lc_field() == b"\x00" + total.to_bytes(2, "big")
    assert pair.card.unwrap_command(over_the_wire(wrapped)).data == bytes(250)


def test_lc_encoding_is_part_of_the_mac() -> None:
    # A short command presented to the card in extended form no longer verifies.
    pair = make_pair(0x01)
    wrapped = pair.host.wrap_command(CommandApdu(0x80, 0xE2, 0x90, 0x00, data=bytes(20)))
    as_extended = CommandApdu(
        wrapped.cla, wrapped.ins, wrapped.p1, wrapped.p2, data=wrapped.data, extended=True
    )
    with pytest.raises(MacError):
        pair.card.unwrap_command(as_extended)


@pytest.mark.parametrize("level", [0x01, 0x33])
def test_chained_command_reassembled_by_the_card(level: int) -> None:
    # The host protects the whole command (extended Lc in the MAC); the transport splits it
    # into short chained pieces; the card reassembles and passes it as extended (> 255 bytes).
    pair = make_pair(level)
    cmd = CommandApdu(0x80, 0xE2, 0x90, 0x00, data=os.urandom(600), le=256, extended=True)
    pieces = split_chain(pair.host.wrap_command(cmd))
    assert len(pieces) == 3 and pieces[0].cla & 0x10 and not pieces[-1].cla & 0x10
    data = b"".join(p.data for p in pieces)
    last = pieces[-1]
    reassembled = CommandApdu(
        last.cla, last.ins, last.p1, last.p2, data=data, le=last.le, extended=len(data) > 255
    )
    plain = pair.card.unwrap_command(reassembled)
    assert plain.data == cmd.data and plain.cla == 0x80 and plain.le == 256
    assert plain.extended  # recomputed from the 600 plain bytes


@pytest.mark.parametrize("level", [0x03, 0x13, 0x33])
def test_empty_data_with_and_without_encrypt_empty(level: int) -> None:
    pair = make_pair(level)
    cmd = CommandApdu(0x80, 0xF2, 0x20, 0x02)
    plain_form = pair.host.wrap_command(cmd)
    assert len(plain_form.data) == 8
    assert pair.card.unwrap_command(plain_form).data == b""
    assert pair.host.encryption_counter == pair.card.encryption_counter == 2
    encrypted_form = pair.host.wrap_command(cmd, encrypt_empty=True)
    assert len(encrypted_form.data) == 16 + 8  # one encrypted 80 00.. block
    assert pair.card.unwrap_command(encrypted_form).data == b""
    assert pair.host.encryption_counter == pair.card.encryption_counter == 3
    # Still in step afterwards.
    assert exchange(pair, CommandApdu(0x80, 0xE2, 0x90, 0x00, data=b"xyz"), b"ok") == b"ok"


def test_encrypt_empty_is_ignored_without_c_decryption() -> None:
    pair = make_pair(0x11)
    wrapped = pair.host.wrap_command(CommandApdu(0x80, 0xF2, 0x20, 0x02), encrypt_empty=True)
    assert len(wrapped.data) == 8


@pytest.mark.parametrize("level", LEVELS)
def test_counter_advances_for_every_command(level: int) -> None:
    pair = make_pair(level)
    assert pair.host.encryption_counter == 1
    for n in range(2, 6):
        exchange(pair, CommandApdu(0x80, 0xCA, 0x00, 0x66, le=256), b"")
        assert pair.host.encryption_counter == pair.card.encryption_counter == n


@pytest.mark.parametrize("sw", [0x6310, 0x6200, 0x6283, 0x9000])
@pytest.mark.parametrize("level", [0x11, 0x13, 0x33])
def test_success_and_warnings_get_an_r_mac(level: int, sw: int) -> None:
    pair = make_pair(level)
    pair.card.unwrap_command(pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66)))
    for data in (b"", b"some data"):
        protected = pair.card.wrap_response(data, sw)
        expected_len = len(data) + 8 if not (level & 0x20 and data) else 16 + 8
        assert len(protected) == expected_len
        # Independent R-MAC (Amd D §6.2.5) over chain || data field || SW.
        mac_input = pair.card.mac_chain + protected[:-8] + sw.to_bytes(2, "big")
        assert protected[-8:] == aes_cmac(pair.keys.s_rmac, mac_input)[:8]
        assert pair.host.unwrap_response(protected, sw) == data


@pytest.mark.parametrize("sw", [0x6A88, 0x6982, 0x6700, 0x6D00, 0x6F00])
@pytest.mark.parametrize("level", LEVELS)
def test_error_status_words_get_no_data_and_no_r_mac(level: int, sw: int) -> None:
    pair = make_pair(level)
    pair.card.unwrap_command(pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66)))
    assert pair.card.wrap_response(b"secret", sw) == b""
    assert pair.host.unwrap_response(b"", sw) == b""


def test_error_status_word_with_data_is_refused_when_r_mac_expected() -> None:
    pair = make_pair(0x33)
    pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66))
    with pytest.raises(ScpFormatError):
        pair.host.unwrap_response(b"unprotected", 0x6A88)
    assert pair.host.aborted


@pytest.mark.parametrize("level", [0x01, 0x03])
def test_levels_without_r_mac_leave_responses_alone(level: int) -> None:
    pair = make_pair(level)
    pair.card.unwrap_command(pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66)))
    assert pair.card.wrap_response(b"plain", 0x9000) == b"plain"
    assert pair.card.wrap_response(b"", 0x9000) == b""
    assert pair.host.unwrap_response(b"plain", 0x9000) == b"plain"


# -- failures --------------------------------------------------------------------------------


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize("where", ["mac", "data", "p1", "cla-channel-ignored"])
@pytest.mark.parametrize("level", LEVELS)
def test_tampered_command(level: int, where: str) -> None:
    pair = make_pair(level)
    wrapped = pair.host.wrap_command(CommandApdu(0x80, 0xE2, 0x90, 0x00, data=bytes(20)))
    if where == "mac":
        tampered = CommandApdu(
            wrapped.cla, wrapped.ins, wrapped.p1, wrapped.p2, data=_flip(wrapped.data, -1)
        )
    elif where == "data":
        tampered = CommandApdu(
            wrapped.cla, wrapped.ins, wrapped.p1, wrapped.p2, data=_flip(wrapped.data, 0)
        )
    elif where == "p1":
        tampered = CommandApdu(wrapped.cla, wrapped.ins, 0x80, wrapped.p2, data=wrapped.data)
    else:
        # Amd D §6.2.4: the logical channel number is not covered by the C-MAC.
        moved = CommandApdu(
            wrapped.cla | 0x01, wrapped.ins, wrapped.p1, wrapped.p2, data=wrapped.data
        )
        assert pair.card.unwrap_command(moved).cla == 0x81
        return
    with pytest.raises(MacError) as info:
        pair.card.unwrap_command(tampered)
    assert wrapped.data[-8:].hex() not in str(info.value).lower()
    assert pair.card.aborted
    with pytest.raises(ScpError, match="aborted"):
        pair.card.unwrap_command(wrapped)
    with pytest.raises(ScpError, match="aborted"):
        pair.card.wrap_response(b"", 0x9000)


@pytest.mark.parametrize("level", [0x11, 0x13, 0x33])
def test_tampered_or_missing_r_mac(level: int) -> None:
    for mutate in (
        lambda r: _flip(r, -1),
        lambda r: _flip(r, 0),
        lambda r: r[:-8],
        lambda r: r[:5],
    ):
        pair = make_pair(level)
        pair.card.unwrap_command(pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66)))
        protected = pair.card.wrap_response(b"response data", 0x9000)
        with pytest.raises(MacError):
            pair.host.unwrap_response(mutate(protected), 0x9000)
        assert pair.host.aborted
        with pytest.raises(ScpError, match="aborted"):
            pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66))


@pytest.mark.parametrize("level", [0x11, 0x33])
def test_r_mac_is_bound_to_the_status_word(level: int) -> None:
    pair = make_pair(level)
    pair.card.unwrap_command(pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66)))
    protected = pair.card.wrap_response(b"data", 0x9000)
    with pytest.raises(MacError):
        pair.host.unwrap_response(protected, 0x6310)


@pytest.mark.parametrize("level", [0x01, 0x03, 0x33])
def test_plain_command_in_a_session_is_refused(level: int) -> None:
    pair = make_pair(level)
    with pytest.raises(MacError):
        pair.card.unwrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66, le=256))
    assert pair.card.aborted


def test_command_too_short_for_a_mac() -> None:
    pair = make_pair(0x01)
    with pytest.raises(ScpFormatError):
        pair.card.unwrap_command(CommandApdu(0x84, 0xCA, 0x00, 0x66, data=bytes(7)))


def _forge_command(pair: Pair, body: bytes) -> CommandApdu:
    """A command whose C-MAC is valid (computed by hand) but whose data field is malformed."""
    lc = len(body) + 8
    mac = aes_cmac(pair.keys.s_mac, pair.card.mac_chain + bytes((0x84, 0xE2, 0, 0, lc)) + body)
    return CommandApdu(0x84, 0xE2, 0x00, 0x00, data=body + mac[:8])


def test_valid_mac_but_ciphertext_not_in_blocks() -> None:
    pair = make_pair(0x03)
    with pytest.raises(ScpFormatError):
        pair.card.unwrap_command(_forge_command(pair, bytes(10)))
    assert pair.card.aborted


def test_valid_mac_but_bad_padding_in_command() -> None:
    pair = make_pair(0x03)
    icv = aes_encrypt_block(pair.keys.s_enc, (1).to_bytes(16, "big"))
    body = aes_cbc_encrypt(pair.keys.s_enc, icv, b"\x01" * 16)  # decrypts to no padding
    with pytest.raises(ScpFormatError, match="padding"):
        pair.card.unwrap_command(_forge_command(pair, body))


def test_valid_r_mac_but_bad_padding_in_response() -> None:
    pair = make_pair(0x33)
    pair.card.unwrap_command(pair.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66)))
    icv = aes_encrypt_block(pair.keys.s_enc, b"\x80" + (1).to_bytes(15, "big"))
    body = aes_cbc_encrypt(pair.keys.s_enc, icv, b"\x01" * 16)
    rmac = aes_cmac(pair.keys.s_rmac, pair.host.mac_chain + body + b"\x90\x00")[:8]
    with pytest.raises(ScpFormatError, match="padding"):
        pair.host.unwrap_response(body + rmac, 0x9000)
    with pytest.raises(ScpFormatError, match="multiple of 16"):
        pair2 = make_pair(0x33)
        pair2.host.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66))
        body = bytes(10)
        rmac = aes_cmac(pair2.keys.s_rmac, pair2.host.mac_chain + body + b"\x90\x00")[:8]
        pair2.host.unwrap_response(body + rmac, 0x9000)


# -- EXTERNAL AUTHENTICATE and state ---------------------------------------------------------


def _fresh(level: int) -> tuple[SecureChannel, SecureChannel, CommandApdu]:
    keys = SessionKeys(os.urandom(16), os.urandom(16), os.urandom(16))
    host, card = SecureChannel(keys, level), SecureChannel(keys, level)
    return host, card, host.external_authenticate_command(b"\x11" * 8)


def test_external_authenticate_failures() -> None:
    _, card, ea = _fresh(0x33)
    with pytest.raises(MacError):
        card.verify_external_authenticate(ea.with_data(_flip(ea.data, -1)))
    assert card.aborted and not card.initiated
    _, card, ea = _fresh(0x33)
    with pytest.raises(MacError):  # the cryptogram is covered by the MAC as well
        card.verify_external_authenticate(ea.with_data(_flip(ea.data, 0)))
    _, card, ea = _fresh(0x33)
    with pytest.raises(ScpFormatError):
        card.verify_external_authenticate(CommandApdu(0x84, 0x82, 0x01, 0x00, data=ea.data))
    _, card, ea = _fresh(0x33)
    with pytest.raises(ScpFormatError):
        card.verify_external_authenticate(ea.with_data(ea.data + b"\x00"))
    _, card, ea = _fresh(0x33)
    with pytest.raises(MacError):
        card.verify_external_authenticate(ea.with_data(ea.data, cla=0x80))


def test_external_authenticate_does_not_advance_the_counter() -> None:
    host, card, ea = _fresh(0x03)
    card.verify_external_authenticate(ea)
    assert host.encryption_counter == card.encryption_counter == 1
    assert host.initiated and card.initiated


def test_state_machine_order() -> None:
    keys = SessionKeys(os.urandom(16), os.urandom(16), os.urandom(16))
    channel = SecureChannel(keys, 0x33)
    with pytest.raises(ScpError, match="not initiated"):
        channel.wrap_command(CommandApdu(0x80, 0xCA, 0x00, 0x66))
    with pytest.raises(ScpError, match="not initiated"):
        channel.unwrap_command(CommandApdu(0x84, 0xCA, 0x00, 0x66, data=bytes(8)))
    with pytest.raises(ScpError, match="not initiated"):
        channel.wrap_response(b"", 0x9000)
    with pytest.raises(ValueError, match="8 bytes"):
        channel.external_authenticate_command(bytes(16))
    ea = channel.external_authenticate_command(bytes(8))
    with pytest.raises(ScpError, match="already"):
        channel.external_authenticate_command(bytes(8))
    with pytest.raises(ScpError, match="already"):
        channel.verify_external_authenticate(ea)
    # R-MAC/R-ENC answer a command: nothing to answer right after EXTERNAL AUTHENTICATE.
    with pytest.raises(ScpError, match="no protected command"):
        channel.wrap_response(b"x", 0x9000)
    with pytest.raises(ScpError, match="no protected command"):
        channel.unwrap_response(bytes(8), 0x9000)


@pytest.mark.parametrize("level", [0x02, 0x10, 0x31, 0x80, 0x81, -1, 0x100])
def test_invalid_levels(level: int) -> None:
    with pytest.raises(ValueError, match="security level"):
        SecureChannel(SessionKeys(bytes(16), bytes(16), bytes(16)), level)


def test_level_00_means_no_secure_messaging() -> None:
    pair = make_pair(0x00)
    cmd = CommandApdu(0x80, 0xCA, 0x00, 0x66, le=256)
    assert pair.host.wrap_command(cmd) == cmd
    assert pair.card.unwrap_command(cmd) == cmd
    assert pair.card.wrap_response(b"abc", 0x9000) == b"abc"
    assert pair.host.unwrap_response(b"abc", 0x9000) == b"abc"
    with pytest.raises(ScpFormatError):
        pair.card.unwrap_command(CommandApdu(0x84, 0xCA, 0x00, 0x66, data=bytes(8)))


def test_host_refuses_bad_commands() -> None:
    pair = make_pair(0x01)
    with pytest.raises(ScpFormatError, match="already"):
        pair.host.wrap_command(CommandApdu(0x84, 0xCA, 0x00, 0x66))
    with pytest.raises(ScpFormatError, match="4-19"):
        pair.host.wrap_command(CommandApdu(0xC0, 0xCA, 0x00, 0x66))
    with pytest.raises(ScpFormatError, match="65535"):
        pair.host.wrap_command(
            CommandApdu(0x80, 0xE2, 0x00, 0x00, data=bytes(65530), extended=True)
        )
    # Refused commands do not count: host and card stay in step.
    assert pair.host.encryption_counter == 1
    assert exchange(pair, CommandApdu(0x80, 0xCA, 0x00, 0x66), b"ok") == b"ok"


def test_card_refuses_further_logical_channels() -> None:
    pair = make_pair(0x01)
    with pytest.raises(ScpFormatError, match="4-19"):
        pair.card.unwrap_command(CommandApdu(0xE0, 0xCA, 0x00, 0x66, data=bytes(8)))
    assert pair.card.aborted


def test_channel_number_is_kept_but_not_maced() -> None:
    keys = SessionKeys(os.urandom(16), os.urandom(16), os.urandom(16))
    a, b = SecureChannel(keys, 0x01), SecureChannel(keys, 0x01)
    a.external_authenticate_command(bytes(8))
    b.external_authenticate_command(bytes(8))
    on_0 = a.wrap_command(CommandApdu(0x80, 0xE2, 0x00, 0x00, data=b"x"))
    on_3 = b.wrap_command(CommandApdu(0x83, 0xE2, 0x00, 0x00, data=b"x"))
    assert (on_0.cla, on_3.cla) == (0x84, 0x87)
    assert on_0.data == on_3.data


def test_reprs_and_messages_hold_no_secrets() -> None:
    pair = make_pair(0x33)
    secrets = [pair.keys.s_enc, pair.keys.s_mac, pair.keys.s_rmac, pair.host.mac_chain]
    text = repr(pair.host) + repr(pair.card) + repr(pair.keys)
    for secret in secrets:
        assert secret.hex()[:8] not in text.lower()
    wrapped = pair.host.wrap_command(CommandApdu(0x80, 0xE2, 0, 0, data=b"secret"))
    with pytest.raises(MacError) as info:
        pair.card.unwrap_command(wrapped.with_data(_flip(wrapped.data, -1)))
    message = str(info.value).lower() + repr(info.value).lower()
    for secret in [*secrets, wrapped.data]:
        assert secret.hex()[:8] not in message


@settings(max_examples=60, deadline=None)
@given(
    level=st.sampled_from(LEVELS),
    key_bytes=st.sampled_from(KEY_BYTES),
    exchanges=st.lists(
        st.tuples(
            st.binary(max_size=600),
            st.one_of(st.none(), st.integers(1, 65536)),
            st.binary(max_size=300),
            st.sampled_from([0x9000, 0x6310, 0x6A88]),
            st.booleans(),
        ),
        min_size=1,
        max_size=5,
    ),
)
def test_property_host_and_card_stay_in_step(
    level: int, key_bytes: int, exchanges: list[tuple[bytes, int | None, bytes, int, bool]]
) -> None:
    pair = make_pair(level, key_bytes)
    for data, le, response, sw, encrypt_empty in exchanges:
        extended = len(data) > 255 or (le is not None and le > 256)
        cmd = CommandApdu(0x80, 0xE2, 0x00, 0x00, data=data, le=le, extended=extended)
        got = exchange(pair, cmd, response, sw, encrypt_empty=encrypt_empty)
        assert got == (response if sw != 0x6A88 else b"")
