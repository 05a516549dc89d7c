"""asterix known answers: EXTERNAL AUTHENTICATE at SL 01 and an encrypted INSTALL at SL 03.

Source: suma12/asterix, asterix/SCP03.py, class Test128 (test_Mutauth, test_Cdecrypt,
unwrapAPDU), commit 16d14f44cd84ff7e8bdeeade8ad962732fca9228 ("designed from SCP03 crypto
calculation by J.M. Valade"). Keys: ENC '@ABCDEFGHIJKLMNO', MAC 4011223344455667 'HIJKLMNO',
DEK 9876543210 '@ABCDEFGHIJ'; SD AID A000000018434D08090A0B0C000000; sequence counter 00002A;
host challenge 0807060504030201. The derivation values themselves are checked in
test_scp03_kdf_vectors.py.
"""

from __future__ import annotations

import pytest

from iotid.apdu import CommandApdu
from iotid.scp03 import (
    SecureChannel,
    SessionKeys,
    StaticKeys,
    derive_session_keys,
    host_cryptogram,
    pseudo_random_challenge,
)

h = bytes.fromhex

STATIC = StaticKeys(
    enc=h("404142434445464748494A4B4C4D4E4F"),
    mac=h("4011223344455667") + b"HIJKLMNO",
    dek=h("9876543210") + b"@ABCDEFGHIJ",
)
AID = h("A000000018434D08090A0B0C000000")
HOST_CHALLENGE = h("0807060504030201")
CARD_CHALLENGE = pseudo_random_challenge(STATIC.enc, 0x00002A, AID)  # A3F5F144D19BE66E
HOST_CRYPTOGRAM = h("AEB8DAD1865B85E2")

EXT_AUTH_SL01 = h("8482010010AEB8DAD1865B85E2") + h("49FC4CF184E61DCD")
MAC_CHAIN_AFTER_EA = h("49FC4CF184E61DCD4C3928E4C617FBA3")
INSTALL_PLAIN = h("80E60200150A45786572636973655236000006EF04C602068200")
INSTALL_SL03_ENCRYPTED_DATA = h("DF31907FC027482D5DCB7DC028245F7C108CA4D2AFF12275079768E1EFE9429E")


def _keys() -> SessionKeys:
    keys = derive_session_keys(STATIC, HOST_CHALLENGE, CARD_CHALLENGE)
    assert host_cryptogram(keys.s_mac, HOST_CHALLENGE, CARD_CHALLENGE) == HOST_CRYPTOGRAM
    return keys


def test_external_authenticate_sl01_host_and_card() -> None:
    host = SecureChannel(_keys(), 0x01)
    assert host.external_authenticate_command(HOST_CRYPTOGRAM).encode() == EXT_AUTH_SL01
    assert host.mac_chain == MAC_CHAIN_AFTER_EA

    card = SecureChannel(_keys(), 0x01)
    assert card.verify_external_authenticate(CommandApdu.parse(EXT_AUTH_SL01)) == HOST_CRYPTOGRAM
    assert card.mac_chain == MAC_CHAIN_AFTER_EA


def test_install_sl03_encrypted_data_field() -> None:
    host = SecureChannel(_keys(), 0x03)
    host.external_authenticate_command(HOST_CRYPTOGRAM)
    wrapped = host.wrap_command(CommandApdu.parse(INSTALL_PLAIN))
    assert wrapped.cla == 0x84
    assert wrapped.data[:-8] == INSTALL_SL03_ENCRYPTED_DATA
    assert len(wrapped.data) == len(INSTALL_SL03_ENCRYPTED_DATA) + 8


@pytest.mark.parametrize("level", [0x01, 0x03])
def test_install_unwrapped_by_the_card(level: int) -> None:
    # asterix Test128.unwrapAPDU: the card recovers the plain INSTALL at SL 01 and SL 03.
    host, card = SecureChannel(_keys(), level), SecureChannel(_keys(), level)
    card.verify_external_authenticate(host.external_authenticate_command(HOST_CRYPTOGRAM))
    wrapped = host.wrap_command(CommandApdu.parse(INSTALL_PLAIN))
    assert card.unwrap_command(wrapped) == CommandApdu.parse(INSTALL_PLAIN)
    assert card.mac_chain == host.mac_chain
