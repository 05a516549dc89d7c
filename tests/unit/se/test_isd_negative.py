"""Negative matrix of the Issuer Security Domain and the card OS: the exact status words.

Scope: INITIALIZE UPDATE / EXTERNAL AUTHENTICATE errors (GPC 2.3.1 Amd D section 7.1), PUT KEY /
DELETE KEY errors (GPC 2.3.1 sections 11.8 and 11.2), card life cycle rules (section 5.1,
SET STATUS section 11.10), GET DATA (section 11.3), SELECT (ISO 7816-4 section 11.2.2), logical
channels, command chaining (ISO 7816-4 section 5.3.3) and 61xx GET RESPONSE (section 7.6.1).
Each case goes through our host (``iotid.host``) or as raw APDU bytes into ``Card.process``.

Not covered: the positive paths and secure messaging cryptography (vectors and conformance tests),
yubikit interoperability (tests/conformance), random input (tests/conformance/test_card_fuzz.py).
"""

from __future__ import annotations

import os

import pytest

from iotid.apdu import ApduError, CommandApdu, parse_tlvs, tlv
from iotid.crypto.aes import aes_cmac, aes_kcv
from iotid.host import SecurityDomainSession
from iotid.scp03 import StaticKeys, derive_session_keys, encrypt_sensitive, host_cryptogram
from iotid.se import Card
from iotid.spec import gp
from iotid.spec.gp import CardLifeCycle, DataTag, GpIns
from iotid.spec.iso7816 import SW, Ins
from iotid.transport.loopback import LoopbackConnection

UID = bytes(range(10))
TEST_KEYS = StaticKeys.gp_test_keys()


@pytest.fixture
def card() -> Card:
    c = Card.create(None, uid=UID)
    c.power_on()
    return c


def raw(card: Card, apdu: bytes | str) -> tuple[bytes, int]:
    """Send raw bytes (or hex) to the card; returns (data, SW)."""
    if isinstance(apdu, str):
        apdu = bytes.fromhex(apdu.replace(" ", ""))
    resp = card.process(apdu)
    assert len(resp) >= 2
    return resp[:-2], int.from_bytes(resp[-2:], "big")


def session(card: Card, keys: StaticKeys = TEST_KEYS, kvn: int = 0) -> SecurityDomainSession:
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(keys, kvn=kvn)
    return sd


def wrapped_sw(sd: SecurityDomainSession, cmd: CommandApdu) -> int:
    """Send ``cmd`` through the open secure channel; returns the status word."""
    return sd.protocol.send(cmd).sw


def initialize_update(card: Card, kvn: int = 0) -> tuple[bytes, bytes]:
    """Raw INITIALIZE UPDATE; returns (host challenge, card challenge)."""
    host_challenge = os.urandom(8)
    data, sw = raw(
        card, bytes([0x80, GpIns.INITIALIZE_UPDATE, kvn, 0x00, 8]) + host_challenge + b"\x00"
    )
    assert sw == SW.OK
    return host_challenge, data[13:21]


def put_key_data(
    new_kvn: int, keys: StaticKeys, dek: bytes, *, bad_kcv_index: int | None = None
) -> bytes:
    """PUT KEY data field for an AES key set (GPC 2.3.1 section 11.8.2.3, Amd D section 6.2.8)."""
    out = bytes([new_kvn])
    for i, key in enumerate((keys.enc, keys.mac, keys.dek)):
        kcv = aes_kcv(key)
        if i == bad_kcv_index:
            kcv = bytes([kcv[0] ^ 0x01]) + kcv[1:]
        out += bytes([gp.KeyType.AES, 16]) + encrypt_sensitive(dek, key) + b"\x03" + kcv
    return out


def random_keys() -> StaticKeys:
    return StaticKeys(os.urandom(16), os.urandom(16), os.urandom(16))


# -- INITIALIZE UPDATE (Amd D section 7.1.1) ---------------------------------------------------


def test_initialize_update_wrong_lc(card: Card) -> None:
    assert raw(card, "80 50 00 00 07 01020304050607 00")[1] == SW.WRONG_LENGTH
    assert raw(card, "80 50 00 00 09 010203040506070809 00")[1] == SW.WRONG_LENGTH


def test_initialize_update_unknown_kvn(card: Card) -> None:
    assert raw(card, "80 50 20 00 08 0102030405060708 00")[1] == SW.REFERENCED_DATA_NOT_FOUND


def test_initialize_update_p2_not_zero(card: Card) -> None:
    assert raw(card, "80 50 00 01 08 0102030405060708 00")[1] == SW.INCORRECT_P1P2


# -- EXTERNAL AUTHENTICATE (Amd D section 7.1.2) -----------------------------------------------


def test_external_authenticate_without_initialize_update(card: Card) -> None:
    assert raw(card, "84 82 33 00 10" + "00" * 16)[1] == SW.CONDITIONS_NOT_SATISFIED


def _external_authenticate(card: Card, level: int, *, bad: bool = False) -> int:
    host_challenge, card_challenge = initialize_update(card)
    keys = derive_session_keys(TEST_KEYS, host_challenge, card_challenge)
    cryptogram = host_cryptogram(keys.s_mac, host_challenge, card_challenge)
    if bad:
        cryptogram = bytes([cryptogram[0] ^ 0xFF]) + cryptogram[1:]
    header = bytes([0x84, GpIns.EXTERNAL_AUTHENTICATE, level, 0x00, 0x10])
    # Amd D section 6.2.4: C-MAC over the zero chaining value, the header with Lc, the data.
    mac = aes_cmac(keys.s_mac, bytes(16) + header + cryptogram)[:8]
    return raw(card, header + cryptogram + mac)[1]


def test_external_authenticate_good_cryptogram_is_accepted(card: Card) -> None:
    # The reference for the two failures below: the same construction, correct, passes.
    assert _external_authenticate(card, 0x33) == SW.OK
    assert card.security_level() == 0x80 | 0x33


def test_external_authenticate_bad_host_cryptogram(card: Card) -> None:
    assert _external_authenticate(card, 0x33, bad=True) == SW.AUTHENTICATION_FAILED
    assert card.security_level() == 0


def test_external_authenticate_invalid_level(card: Card) -> None:
    assert _external_authenticate(card, 0x02) == SW.INCORRECT_P1P2
    assert card.security_level() == 0


def test_external_authenticate_bad_cmac_aborts(card: Card) -> None:
    initialize_update(card)
    assert raw(card, "84 82 33 00 10" + "00" * 16)[1] == SW.SECURITY_STATUS_NOT_SATISFIED
    # The INITIALIZE UPDATE state is consumed: a second attempt has nothing to authenticate.
    assert raw(card, "84 82 33 00 10" + "00" * 16)[1] == SW.CONDITIONS_NOT_SATISFIED
    assert card.security_level() == 0


def test_plain_command_inside_a_session_aborts_it(card: Card) -> None:
    sd = session(card)
    assert raw(card, "00 CA 00 66 00")[1] == SW.SECURITY_STATUS_NOT_SATISFIED
    # Amd D section 5.6: the session is aborted; a correctly wrapped command is refused too.
    get_key_info = CommandApdu(0x80, GpIns.GET_DATA, 0x00, 0xE0, b"", 256)
    assert wrapped_sw(sd, get_key_info) == SW.SECURITY_STATUS_NOT_SATISFIED
    sd.authenticate(TEST_KEYS)
    assert wrapped_sw(sd, get_key_info) == SW.OK


# -- PUT KEY (GPC 2.3.1 section 11.8) ----------------------------------------------------------


def _put_key(sd: SecurityDomainSession, p1: int, data: bytes) -> int:
    return wrapped_sw(
        sd, CommandApdu(0x80, GpIns.PUT_KEY, p1, gp.PUT_KEY_MULTIPLE | gp.KEY_ID_ENC, data, 256)
    )


@pytest.mark.parametrize("bad_index", [0, 1, 2])
def test_put_key_wrong_kcv_changes_nothing(card: Card, bad_index: int) -> None:
    sd = session(card)
    before = sd.get_key_information()
    snapshot = {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")}
    data = put_key_data(0x31, random_keys(), TEST_KEYS.dek, bad_kcv_index=bad_index)
    assert _put_key(sd, 0x00, data) == SW.WRONG_DATA
    assert {k: card.nvm.get(k) for k in card.nvm.keys(prefix="")} == snapshot
    assert sd.get_key_information() == before
    assert {kvn for (_, kvn) in before} == {gp.TEST_KEY_VERSION}


def test_put_key_adding_an_existing_kvn(card: Card) -> None:
    sd = session(card)
    data = put_key_data(gp.TEST_KEY_VERSION, random_keys(), TEST_KEYS.dek)
    assert _put_key(sd, 0x00, data) == SW.WRONG_DATA
    session(card, TEST_KEYS, kvn=gp.TEST_KEY_VERSION)  # the test key set is still there


def test_put_key_replacing_a_missing_kvn(card: Card) -> None:
    sd = session(card)
    data = put_key_data(0x32, random_keys(), TEST_KEYS.dek)
    assert _put_key(sd, 0x31, data) == SW.REFERENCED_DATA_NOT_FOUND
    assert {kvn for (_, kvn) in sd.get_key_information()} == {gp.TEST_KEY_VERSION}


# -- DELETE KEY (GPC 2.3.1 section 11.2) -------------------------------------------------------


def test_delete_last_key_set_needs_p2_b1(card: Card) -> None:
    sd = session(card)
    with pytest.raises(ApduError) as exc:
        sd.delete_key(gp.TEST_KEY_VERSION)
    assert exc.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert {kvn for (_, kvn) in sd.get_key_information()} == {gp.TEST_KEY_VERSION}


# -- card life cycle (GPC 2.3.1 section 5.1, SET STATUS section 11.10) --------------------------


def test_secured_from_op_ready_refused_with_test_keys(card: Card) -> None:
    sd = session(card)
    with pytest.raises(ApduError) as exc:
        sd.set_card_life_cycle(CardLifeCycle.SECURED)
    assert exc.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert card.card_life_cycle == CardLifeCycle.OP_READY


def test_secured_requires_test_keys_gone_and_is_irreversible(card: Card) -> None:
    sd = session(card)
    sd.set_card_life_cycle(CardLifeCycle.INITIALIZED)
    with pytest.raises(ApduError) as exc:
        sd.set_card_life_cycle(CardLifeCycle.SECURED)
    assert exc.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert card.card_life_cycle == CardLifeCycle.INITIALIZED

    new = random_keys()
    sd.put_key(0x31, new, replace_kvn=gp.TEST_KEY_VERSION)
    sd = session(card, new, kvn=0x31)
    sd.set_card_life_cycle(CardLifeCycle.SECURED)
    assert card.card_life_cycle == CardLifeCycle.SECURED

    # The test keys can no longer open a session: KVN 30 is gone.
    card.power_on()
    assert raw(card, "80 50 30 00 08 0102030405060708 00")[1] == SW.REFERENCED_DATA_NOT_FOUND

    # SECURED -> INITIALIZED is not a GP transition.
    sd = session(card, new, kvn=0x31)
    with pytest.raises(ApduError) as exc:
        sd.set_card_life_cycle(CardLifeCycle.INITIALIZED)
    assert exc.value.sw == SW.CONDITIONS_NOT_SATISFIED
    assert card.card_life_cycle == CardLifeCycle.SECURED


# -- GET DATA (GPC 2.3.1 section 11.3) ---------------------------------------------------------


def test_get_data_unknown_tag(card: Card) -> None:
    assert raw(card, "80 CA 00 AA 00")[1] == SW.REFERENCED_DATA_NOT_FOUND
    assert raw(card, "00 CA 9F 7E 00")[1] == SW.REFERENCED_DATA_NOT_FOUND


@pytest.mark.parametrize(
    "tag", [DataTag.CPLC, DataTag.CARD_RECOGNITION_DATA, DataTag.KEY_INFORMATION]
)
def test_get_data_cla_00_bare_cla_80_tagged(card: Card, tag: DataTag) -> None:
    bare, sw = raw(card, bytes([0x00, Ins.GET_DATA, tag >> 8, tag & 0xFF, 0x00]))
    assert sw == SW.OK and bare
    tagged, sw = raw(card, bytes([0x80, Ins.GET_DATA, tag >> 8, tag & 0xFF, 0x00]))
    assert sw == SW.OK
    assert tagged == tlv(tag, bare)
    (obj,) = parse_tlvs(tagged)
    assert obj.tag == tag and obj.value == bare
    if tag is DataTag.CPLC:
        assert len(bare) == 42
        assert bare[0:4] + bare[12:18] == UID


# -- SELECT, channels, chaining, GET RESPONSE (ISO 7816-4) --------------------------------------


def test_select_unknown_aid(card: Card) -> None:
    assert raw(card, "00 A4 04 00 08 A000000151000099 00")[1] == SW.FILE_NOT_FOUND


def test_select_partial_aid_selects_isd(card: Card) -> None:
    fci, sw = raw(card, "00 A4 04 00 05 A000000151 00")
    assert sw == SW.OK
    (fci_obj,) = parse_tlvs(fci)
    assert fci_obj.tag == 0x6F
    assert {t.tag: t.value for t in fci_obj.children()}[0x84] == gp.ISD_AID


def test_select_ends_the_secure_channel(card: Card) -> None:
    session(card)
    assert card.security_level() & 0x80
    assert raw(card, "00 A4 04 00 08 A000000151000000 00")[1] == SW.OK
    assert card.security_level() == 0


def test_logical_channel_1_not_supported(card: Card) -> None:
    assert raw(card, "01 CA 00 66 00")[1] == SW.LOGICAL_CHANNEL_NOT_SUPPORTED
    assert raw(card, "00 70 00 00 01")[1] == SW.LOGICAL_CHANNEL_NOT_SUPPORTED


def test_chain_with_changed_ins(card: Card) -> None:
    assert raw(card, "10 E2 00 00 02 4201")[1] == SW.OK
    assert raw(card, "00 CA 00 66 01 00")[1] == SW.LAST_COMMAND_OF_CHAIN_EXPECTED
    # The broken chain is gone: the next plain command works.
    assert raw(card, "00 CA 00 66 00")[1] == SW.OK


def test_get_response_with_nothing_pending(card: Card) -> None:
    assert raw(card, "00 C0 00 00 00")[1] == SW.CONDITIONS_NOT_SATISFIED


def test_long_response_on_short_apdu_comes_in_61xx_pieces(card: Card) -> None:
    cin = os.urandom(300)
    sd = session(card)
    sd.store_data([(gp.IsdDgi.CIN, cin)])
    card.power_on()  # end the session: plain GET DATA again
    data, sw = raw(card, "00 CA 00 45 00")
    assert len(data) == 256
    assert sw == 0x6100 | (300 - 256)
    rest, sw = raw(card, bytes([0x00, Ins.GET_RESPONSE, 0x00, 0x00, sw & 0xFF]))
    assert sw == SW.OK
    assert data + rest == cin
    # GET RESPONSE with a smaller Le hands out that much and keeps the rest (ISO 7816-4 §7.6.1).
    data, sw = raw(card, "00 CA 00 45 00")
    part, sw2 = raw(card, "00 C0 00 00 10")
    assert (len(part), sw2) == (16, 0x6100 | (300 - 256 - 16))
    last, sw3 = raw(card, "00 C0 00 00 00")
    assert sw3 == SW.OK
    assert data + part + last == cin
    # Nothing is left pending once it has been read.
    assert raw(card, "00 C0 00 00 00")[1] == SW.CONDITIONS_NOT_SATISFIED


def test_long_response_reassembled_by_our_host(card: Card) -> None:
    cin = os.urandom(700)
    sd = session(card)
    sd.store_data([(gp.IsdDgi.CIN, cin)])
    assert sd.get_data(DataTag.CIN) == cin  # wrapped, R-MAC'd, 61xx followed
    plain = SecurityDomainSession(LoopbackConnection(card))
    assert plain.get_data(DataTag.CIN) == cin
