"""Host session for the Issuer Security Domain (GPC 2.3.1 chapter 11, Amd D).

Scope: select the ISD, open SCP03 at a chosen level, GET DATA (CPLC with the card UID, key
information, card recognition data), PUT KEY (replace or add an SCP03 key set, KCVs checked),
DELETE KEY, GET STATUS, SET STATUS, INSTALL [for personalization] and STORE DATA with DGI coding
(secret DGIs 8000-8FFF encrypted under Key-DEK). The personalisation routine of the factory drives
this session; it is the only one.
Not in scope: the protocol stack (``iotid.host.protocol``), the applets' own sessions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from iotid.apdu import ApduFormatError, encode_dgi, parse_tlvs, tlv, unpack_tlv
from iotid.crypto.aes import aes_kcv
from iotid.crypto.padding import pad_iso9797_m2
from iotid.host.errors import BadResponseError, HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.host.scp import ScpSessionInfo, open_scp03
from iotid.scp03 import StaticKeys, encrypt_sensitive
from iotid.spec import gp
from iotid.spec.gp import DataTag, GpIns
from iotid.transport.base import Connection

#: STORE DATA block size: a short APDU's data field less the C-MAC and one padding block.
STORE_BLOCK = 0xDF - 16


@dataclass(frozen=True)
class Cplc:
    raw: bytes

    @property
    def uid(self) -> bytes:
        """IC fabricator || IC type || IC serial number || IC batch identifier (10 bytes)."""
        r = self.raw
        return r[0:4] + r[12:16] + r[16:18]


@dataclass(frozen=True)
class RegistryInfo:
    aid: bytes
    life_cycle: int
    privileges: int
    elf_aid: bytes | None = None
    sd_aid: bytes | None = None


class SecurityDomainSession:
    """The ISD, as seen from the host."""

    def __init__(self, conn: Connection | SmartCardProtocol, *, extended: bool = False) -> None:
        self.protocol = (
            conn
            if isinstance(conn, SmartCardProtocol)
            else SmartCardProtocol(conn, extended=extended)
        )
        self.protocol.select(gp.ISD_AID)
        self._keys: StaticKeys | None = None
        self._next_block = 0

    def __repr__(self) -> str:
        return f"SecurityDomainSession(authenticated={self._keys is not None})"

    # -- authentication -----------------------------------------------------------------------
    def authenticate(self, keys: StaticKeys, *, kvn: int = 0, level: int = 0x33) -> ScpSessionInfo:
        info = open_scp03(self.protocol, keys, kvn=kvn, level=level)
        self._keys = keys
        return info

    def _dek(self) -> bytes:
        if self._keys is None:
            raise HostError("open a secure channel first (authenticate)")
        return self._keys.dek

    # -- GET DATA -----------------------------------------------------------------------------
    def get_data(self, tag: int, *, tagged: bool = False) -> bytes:
        """CLA 00 returns the bare value; ``tagged`` (CLA 80) the whole object."""
        return self.protocol.transmit(
            0x80 if tagged else 0x00, GpIns.GET_DATA, tag >> 8, tag & 0xFF, le=256
        )

    def get_cplc(self) -> Cplc:
        raw = self.get_data(DataTag.CPLC)
        if len(raw) != 42:
            raise BadResponseError("CPLC is not 42 bytes")
        return Cplc(raw)

    def get_key_information(self) -> dict[tuple[int, int], tuple[int, int]]:
        """{(KID, KVN): (key type, key length)}."""
        out: dict[tuple[int, int], tuple[int, int]] = {}
        try:
            for item in parse_tlvs(self.get_data(DataTag.KEY_INFORMATION)):
                v = item.value
                out[(v[0], v[1])] = (v[2], v[3])
        except (ApduFormatError, IndexError) as exc:
            raise BadResponseError("malformed key information") from exc
        return out

    def get_card_recognition_data(self) -> bytes:
        try:
            return unpack_tlv(gp.TAG_CARD_DATA, self.get_data(DataTag.CARD_RECOGNITION_DATA))
        except ApduFormatError as exc:
            raise BadResponseError("malformed card recognition data") from exc

    # -- keys ---------------------------------------------------------------------------------
    def put_key(self, new_kvn: int, keys: StaticKeys, *, replace_kvn: int = 0) -> None:
        """Add (``replace_kvn`` 0) or replace an SCP03 key set; checks the KCVs the card returns."""
        dek = self._dek()
        data = bytes([new_kvn])
        expected = bytes([new_kvn])
        for key in (keys.enc, keys.mac, keys.dek):
            kcv = aes_kcv(key)
            encrypted = encrypt_sensitive(dek, key.ljust(-(-len(key) // 16) * 16, b"\x00"))
            # 88 11 10 <key>: key type, length, then the key's own length byte (GPC 2.3.1 11.8.2.3).
            data += (
                bytes([gp.KeyType.AES, len(encrypted) + 1, len(key)])
                + encrypted
                + bytes([len(kcv)])
                + kcv
            )
            expected += kcv
        resp = self.protocol.transmit(
            0x80, GpIns.PUT_KEY, replace_kvn, gp.PUT_KEY_MULTIPLE | gp.KEY_ID_ENC, data, 256
        )
        if resp[: len(expected)] != expected:
            raise BadResponseError("PUT KEY: the card returned other key check values")

    def delete_key(self, kvn: int, *, delete_last: bool = False) -> None:
        data = tlv(gp.TAG_DELETE_KEY_VERSION, bytes([kvn]))
        self.protocol.transmit(0x80, GpIns.DELETE, 0x00, int(delete_last), data, 256)

    # -- registry -----------------------------------------------------------------------------
    def get_status(
        self, scope: int = gp.GET_STATUS_APPS, aid_prefix: bytes = b""
    ) -> list[RegistryInfo]:
        raw = self.protocol.transmit(
            0x80, GpIns.GET_STATUS, scope, gp.GET_STATUS_TAGGED, tlv(gp.TAG_AID, aid_prefix), 256
        )
        out = []
        try:
            for entry in parse_tlvs(raw):
                items = {t.tag: t.value for t in entry.children()}
                privileges = items.get(gp.TAG_PRIVILEGES, b"\x00")
                out.append(
                    RegistryInfo(
                        aid=items[gp.TAG_AID],
                        life_cycle=items[gp.TAG_LIFE_CYCLE][0],
                        privileges=int.from_bytes(privileges, "big"),
                        elf_aid=items.get(gp.TAG_ELF_AID),
                        sd_aid=items.get(gp.TAG_ASSOCIATED_SD),
                    )
                )
        except (ApduFormatError, KeyError, IndexError) as exc:
            raise BadResponseError("malformed GET STATUS answer") from exc
        return out

    def set_card_life_cycle(self, state: int) -> None:
        self.protocol.transmit(0x80, GpIns.SET_STATUS, gp.SET_STATUS_ISD, state, b"", None)

    def set_app_life_cycle(self, aid: bytes, state: int) -> None:
        self.protocol.transmit(0x80, GpIns.SET_STATUS, gp.SET_STATUS_APP, state, aid, None)

    # -- personalisation ----------------------------------------------------------------------
    def install_for_personalization(self, aid: bytes) -> None:
        data = b"\x00\x00" + bytes([len(aid)]) + aid + b"\x00\x00\x00"
        self.protocol.transmit(0x80, GpIns.INSTALL, gp.INSTALL_FOR_PERSONALIZATION, 0x00, data, 256)
        self._next_block = 0

    def store_data(
        self, dgis: Iterable[tuple[int, bytes]], *, last: bool = True, block: int = STORE_BLOCK
    ) -> None:
        """STORE DATA, DGI format; secret DGIs (8000-8FFF) padded and encrypted under Key-DEK.

        Block numbers continue across calls until one with ``last`` (the default) ends the
        personalisation of the current target.
        """
        stream = b""
        has_secret = False
        for tag, value in dgis:
            secret = gp.DGI_SECRET_MIN <= tag <= gp.DGI_SECRET_MAX
            has_secret = has_secret or secret
            wire = encrypt_sensitive(self._dek(), pad_iso9797_m2(value)) if secret else value
            stream += encode_dgi(tag, wire)
        blocks: Sequence[bytes] = [stream[i : i + block] for i in range(0, len(stream), block)] or [
            b""
        ]
        enc = gp.STORE_ENC_APPLICATION if has_secret else gp.STORE_ENC_NONE
        for n, chunk in enumerate(blocks):
            final = gp.STORE_LAST_BLOCK if last and n == len(blocks) - 1 else 0
            p1 = final | enc | gp.STORE_FORMAT_DGI
            self.protocol.transmit(0x80, GpIns.STORE_DATA, p1, self._next_block & 0xFF, chunk, None)
            self._next_block += 1
        if last:
            self._next_block = 0
