"""The Issuer Security Domain (GPC 2.3.1), AID A000000151000000.

Scope: GET DATA (IIN, CIN, card recognition data, key information, sequence counter, key
diversification data, CPLC), PUT KEY and DELETE KEY for SCP03 key sets, GET STATUS, SET STATUS,
INSTALL [for personalization] and STORE DATA (DGI or BER-TLV coded, secrets encrypted under
Key-DEK), forwarding personalisation data to the target application.
INITIALIZE UPDATE / EXTERNAL AUTHENTICATE and secure messaging are the secure channel service's
(``iotid.se.securechannel``); the card OS routes them. Card content loading (LOAD, INSTALL [for
load/install]) is not supported: the card's applications are ROM applications.
"""

from __future__ import annotations

from typing import Protocol

from iotid.apdu import ApduError, ApduFormatError, CommandApdu, DgiStream, parse_tlvs, tlv
from iotid.crypto.aes import aes_kcv
from iotid.crypto.padding import PaddingError, unpad_iso9797_m2
from iotid.scp03 import StaticKeys, decrypt_sensitive
from iotid.se.applet import Applet, AppletContext, ClaClass, handles
from iotid.se.keysets import KeySets
from iotid.se.registry import Registry, RegistryEntry, check_app_transition, check_card_transition
from iotid.se.securechannel import SecureChannelService
from iotid.spec import gp
from iotid.spec.gp import CardLifeCycle, DataTag, GpIns, IsdDgi, SecurityLevel
from iotid.spec.iso7816 import SW

MAX_KEY_SETS = 8
_KEY_LENGTHS = (16, 24, 32)


class CardOs(Protocol):
    """What the ISD needs from the card OS beyond an applet's context."""

    @property
    def registry(self) -> Registry: ...

    def applet(self, aid: bytes) -> Applet | None: ...

    def cplc(self) -> bytes: ...


class IssuerSecurityDomain(Applet):
    AID = gp.ISD_AID
    NAME = "isd"
    PRIVILEGES = int(gp.ISD_PRIVILEGES) << 16
    INITIAL_LIFE_CYCLE = CardLifeCycle.OP_READY
    SECURE_MESSAGING = True

    def __init__(
        self, ctx: AppletContext, os: CardOs, keysets: KeySets, channel: SecureChannelService
    ) -> None:
        super().__init__(ctx)
        self._os = os
        self.keysets = keysets
        self.channel = channel
        # Transient personalisation state (GPC 2.3.1 section 11.11): target, next block, DGI parser.
        self._perso_target: bytes | None = None
        self._next_block = 0
        self._stream = DgiStream()

    def on_select(self) -> bytes:
        self._reset_perso()
        body = tlv(0x84, self.AID) + tlv(0xA5, self._card_recognition_data() + tlv(0x9F65, b"\xff"))
        return tlv(0x6F, body)

    def on_deselect(self) -> None:
        self._reset_perso()

    def _reset_perso(self) -> None:
        self._perso_target = None
        self._next_block = 0
        self._stream = DgiStream()

    def _require_session(self) -> None:
        if not self.channel.security_level & SecurityLevel.AUTHENTICATED:
            raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)

    # -- GET DATA (GPC 2.3.1 section 11.3) -----------------------------------------------------
    @handles(GpIns.GET_DATA)
    def get_data(self, cmd: CommandApdu) -> bytes:
        tag = (cmd.p1 << 8) | cmd.p2
        try:
            value = self._data_object(DataTag(tag))
        except ValueError:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND) from None
        if value is None:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        # CLA 00: the bare value; CLA 80 (GP): the whole tagged object.
        return tlv(tag, value) if cmd.cla & 0x80 else value

    def _data_object(self, tag: DataTag) -> bytes | None:
        if tag is DataTag.CPLC:
            return self._os.cplc()
        if tag is DataTag.KEY_DIVERSIFICATION_DATA:
            return self.ctx.services.uid
        if tag is DataTag.CARD_RECOGNITION_DATA:
            return self._card_recognition_data()
        if tag is DataTag.KEY_INFORMATION:
            return self._key_information()
        if tag is DataTag.SEQUENCE_COUNTER:
            versions = self.keysets.versions()
            return self.keysets.sequence(versions[0]).to_bytes(3, "big") if versions else None
        if tag is DataTag.IIN:
            return self.load("iin")
        if tag is DataTag.CIN:
            return self.load("cin")
        return None  # pragma: no cover - DataTag is closed

    def _card_recognition_data(self) -> bytes:
        # GPC 2.3.1 Annex H.2.
        body = (
            tlv(0x06, gp.OID_GP_RID)
            + tlv(0x60, tlv(0x06, gp.OID_CARD_MGMT + gp.GP_VERSION))
            + tlv(0x63, tlv(0x06, gp.OID_CARD_ID_SCHEME))
            + tlv(0x64, tlv(0x06, gp.OID_SCP + bytes([gp.SCP03, gp.DEFAULT_I])))
        )
        return tlv(gp.TAG_CARD_DATA, body)

    def _key_information(self) -> bytes:
        # GPC 2.3.1 section 11.3.3.1: C0 { KID, KVN, type, length } per key.
        out = b""
        for kvn in self.keysets.versions():
            for kid, length in self.keysets.key_lengths(kvn):
                out += tlv(gp.TAG_KEY_INFO, bytes([kid, kvn, gp.KeyType.AES, length]))
        return out

    # -- PUT KEY (GPC 2.3.1 section 11.8; Amd D section 6.2.8) ---------------------------------
    @handles(GpIns.PUT_KEY, cla=ClaClass.PROPRIETARY)
    def put_key(self, cmd: CommandApdu) -> bytes:
        self._require_session()
        if cmd.p2 != (gp.PUT_KEY_MULTIPLE | gp.KEY_ID_ENC):
            raise ApduError(SW.INCORRECT_P1P2)  # only whole SCP03 key sets
        data = cmd.data
        if len(data) < 1:
            raise ApduError(SW.WRONG_LENGTH)
        new_kvn, off = data[0], 1
        if new_kvn in (0x00, 0xFF):
            raise ApduError(SW.WRONG_DATA)
        dek = self.channel.session_dek()
        keys: list[bytes] = []
        kcvs: list[bytes] = []
        try:
            for _ in range(3):
                key_type, length = data[off], data[off + 1]
                value = data[off + 2 : off + 2 + length]
                off += 2 + length
                kcv_len = data[off]
                kcv = data[off + 1 : off + 1 + kcv_len]
                off += 1 + kcv_len
                if key_type != gp.KeyType.AES or len(value) != length or len(kcv) != kcv_len:
                    raise ApduError(SW.WRONG_DATA)
                key = _decrypt_key(dek, value)
                if kcv_len and kcv != aes_kcv(key)[:kcv_len]:
                    raise ApduError(SW.WRONG_DATA)
                keys.append(key)
                kcvs.append(aes_kcv(key))
        except IndexError:
            raise ApduError(SW.WRONG_LENGTH) from None
        if off != len(data) or len({len(k) for k in keys}) != 1:
            raise ApduError(SW.WRONG_DATA)
        existing = self.keysets.versions()
        if cmd.p1 == 0x00:
            if new_kvn in existing:
                raise ApduError(SW.WRONG_DATA)
            if len(existing) >= MAX_KEY_SETS:
                raise ApduError(SW.NOT_ENOUGH_MEMORY)
        else:
            if cmd.p1 not in existing:
                raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
            if new_kvn != cmd.p1 and new_kvn in existing:
                raise ApduError(SW.WRONG_DATA)
            self.keysets.delete(cmd.p1)
        self.keysets.put(new_kvn, StaticKeys(keys[0], keys[1], keys[2]))
        return bytes([new_kvn]) + b"".join(kcvs)

    # -- DELETE (GPC 2.3.1 section 11.2) -------------------------------------------------------
    @handles(GpIns.DELETE, cla=ClaClass.PROPRIETARY)
    def delete(self, cmd: CommandApdu) -> bytes:
        self._require_session()
        try:
            items = {t.tag: t.value for t in parse_tlvs(cmd.data)}
        except ApduFormatError:
            raise ApduError(SW.WRONG_DATA) from None
        if gp.TAG_DELETE_AID in items:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)  # ROM applications cannot be deleted
        kvn_raw = items.get(gp.TAG_DELETE_KEY_VERSION)
        if kvn_raw is None or len(kvn_raw) != 1:
            raise ApduError(SW.WRONG_DATA)
        kid_raw = items.get(gp.TAG_DELETE_KEY_ID)
        if kid_raw is not None and kid_raw not in (b"\x01", b"\x02", b"\x03"):
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        kvn = kvn_raw[0]
        versions = self.keysets.versions()
        if kvn not in versions:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        if len(versions) == 1 and not cmd.p2 & 0x01:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)  # would leave the ISD without keys
        # An SCP03 key set is only usable whole: deleting one of its keys deletes the set.
        self.keysets.delete(kvn)
        return b"\x00"

    # -- GET STATUS (GPC 2.3.1 section 11.4) ---------------------------------------------------
    @handles(GpIns.GET_STATUS, cla=ClaClass.PROPRIETARY)
    def get_status(self, cmd: CommandApdu) -> bytes:
        self._require_session()
        tagged = bool(cmd.p2 & gp.GET_STATUS_TAGGED)
        if cmd.p2 & ~(gp.GET_STATUS_TAGGED | gp.GET_STATUS_NEXT):
            raise ApduError(SW.INCORRECT_P1P2)
        try:
            criteria = {t.tag: t.value for t in parse_tlvs(cmd.data)}
        except ApduFormatError:
            raise ApduError(SW.WRONG_DATA) from None
        prefix = criteria.get(gp.TAG_AID, b"")
        entries = self._os.registry.entries()
        out = b""
        if cmd.p1 == gp.GET_STATUS_ISD:
            for e in entries:
                if e.aid == gp.ISD_AID and e.aid.startswith(prefix):
                    out += _status_entry(e, tagged, with_links=False)
        elif cmd.p1 == gp.GET_STATUS_APPS:
            for e in entries:
                if e.aid != gp.ISD_AID and e.aid.startswith(prefix):
                    out += _status_entry(e, tagged, with_links=True)
        elif cmd.p1 in (gp.GET_STATUS_ELF, gp.GET_STATUS_ELF_MODULES):
            elfs: dict[bytes, list[bytes]] = {}
            for e in entries:
                if e.elf_aid and e.elf_aid.startswith(prefix):
                    elfs.setdefault(e.elf_aid, []).append(e.aid)
            for elf, modules in elfs.items():
                out += _elf_entry(elf, modules, tagged, cmd.p1 == gp.GET_STATUS_ELF_MODULES)
        else:
            raise ApduError(SW.INCORRECT_P1P2)
        if not out:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        return out

    # -- SET STATUS (GPC 2.3.1 section 11.10) --------------------------------------------------
    @handles(GpIns.SET_STATUS, cla=ClaClass.PROPRIETARY)
    def set_status(self, cmd: CommandApdu) -> bytes:
        self._require_session()
        registry = self._os.registry
        if cmd.p1 == gp.SET_STATUS_ISD:
            if cmd.data not in (b"", gp.ISD_AID):
                raise ApduError(SW.WRONG_DATA)
            current = registry.card_life_cycle
            check_card_transition(current, cmd.p2)
            if cmd.p2 == CardLifeCycle.SECURED and any(
                (k := self.keysets.get(v)) is not None and k.is_gp_test_keys()
                for v in self.keysets.versions()
            ):
                # Our rule: a SECURED card carries no GP test keys.
                raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
            registry.set_life_cycle(gp.ISD_AID, cmd.p2)
            return b""
        if cmd.p1 in (gp.SET_STATUS_APP, gp.SET_STATUS_SD_AND_APPS):
            entry = registry.get(cmd.data)
            if entry is None or entry.aid == gp.ISD_AID:
                raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
            if cmd.p2 == gp.APP_LOCKED_BIT:
                new = entry.life_cycle | gp.APP_LOCKED_BIT
            elif cmd.p2 == 0x00:
                new = entry.life_cycle & ~gp.APP_LOCKED_BIT
            else:
                check_app_transition(entry.life_cycle, cmd.p2)
                new = cmd.p2 | (entry.life_cycle & gp.APP_LOCKED_BIT)
            registry.set_life_cycle(entry.aid, new)
            return b""
        raise ApduError(SW.INCORRECT_P1P2)

    # -- INSTALL [for personalization] (GPC 2.3.1 section 11.5.2.3.4) --------------------------
    @handles(GpIns.INSTALL, cla=ClaClass.PROPRIETARY)
    def install(self, cmd: CommandApdu) -> bytes:
        self._require_session()
        if cmd.p1 != gp.INSTALL_FOR_PERSONALIZATION:
            raise ApduError(SW.FUNCTION_NOT_SUPPORTED)  # no card content loading: ROM applications
        fields = _lv_fields(cmd.data, 6)
        aid = fields[2]
        entry = self._os.registry.get(aid)
        applet = self._os.applet(aid)
        if entry is None or applet is None or aid == gp.ISD_AID:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)
        if entry.locked or entry.sd_aid != gp.ISD_AID:
            raise ApduError(SW.CONDITIONS_NOT_SATISFIED)
        self._perso_target = aid
        self._next_block = 0
        self._stream = DgiStream()
        return b"\x00"

    # -- STORE DATA (GPC 2.3.1 section 11.11) --------------------------------------------------
    @handles(GpIns.STORE_DATA)  # GP says CLA 8x; yubikit sends 0x, and cards accept it
    def store_data_command(self, cmd: CommandApdu) -> bytes:
        self._require_session()
        if cmd.p2 != self._next_block & 0xFF:
            raise ApduError(SW.INCORRECT_P1P2)
        fmt = cmd.p1 & gp.STORE_FORMAT_MASK
        encrypted = cmd.p1 & gp.STORE_ENC_MASK in (gp.STORE_ENC_APPLICATION, gp.STORE_ENC_ENCRYPTED)
        last = bool(cmd.p1 & gp.STORE_LAST_BLOCK)
        if fmt == gp.STORE_FORMAT_BER:
            groups = self._ber_groups(cmd.data)
        elif fmt == gp.STORE_FORMAT_DGI:
            try:
                groups = self._stream.feed(cmd.data)
                if last:
                    self._stream.finish()
            except ApduFormatError:
                raise ApduError(SW.WRONG_DATA) from None
        else:
            raise ApduError(SW.INCORRECT_P1P2)
        for dgi, value in groups:
            if gp.DGI_SECRET_MIN <= dgi <= gp.DGI_SECRET_MAX:
                if not encrypted:
                    raise ApduError(SW.WRONG_DATA)
                if not self.channel.security_level & SecurityLevel.C_DECRYPTION:
                    raise ApduError(SW.SECURITY_STATUS_NOT_SATISFIED)
                self._deliver(dgi, self._decrypt_secret(value))
            else:
                self._deliver(dgi, value)
        self._next_block += 1
        if last:
            target = self._target_applet()
            if target is not None:
                target.end_personalisation()
            self._reset_perso()
        return b""

    def _ber_groups(self, data: bytes) -> list[tuple[int, bytes]]:
        try:
            return [(t.tag, t.value) for t in parse_tlvs(data)]
        except ApduFormatError:
            raise ApduError(SW.WRONG_DATA) from None

    def _decrypt_secret(self, value: bytes) -> bytes:
        if not value or len(value) % 16:
            raise ApduError(SW.WRONG_DATA)
        try:
            return unpad_iso9797_m2(decrypt_sensitive(self.channel.session_dek(), value))
        except (PaddingError, ValueError):
            raise ApduError(SW.WRONG_DATA) from None

    def _target_applet(self) -> Applet | None:
        return None if self._perso_target is None else self._os.applet(self._perso_target)

    def _deliver(self, dgi: int, value: bytes) -> None:
        target = self._target_applet()
        if target is not None:
            target.store_data(dgi, value)
            return
        if dgi in (IsdDgi.IIN, IsdDgi.CIN):
            self.store("iin" if dgi == IsdDgi.IIN else "cin", value)
        elif dgi == IsdDgi.SCP03_KEY_SET:
            if (
                len(value) < 1 + 3 * 16
                or (len(value) - 1) % 3
                or (len(value) - 1) // 3 not in _KEY_LENGTHS
            ):
                raise ApduError(SW.WRONG_DATA)
            n = (len(value) - 1) // 3
            kvn = value[0]
            if kvn in (0x00, 0xFF):
                raise ApduError(SW.WRONG_DATA)
            if kvn not in self.keysets.versions() and len(self.keysets.versions()) >= MAX_KEY_SETS:
                raise ApduError(SW.NOT_ENOUGH_MEMORY)
            self.keysets.put(
                kvn, StaticKeys(value[1 : 1 + n], value[1 + n : 1 + 2 * n], value[1 + 2 * n :])
            )
        else:
            raise ApduError(SW.REFERENCED_DATA_NOT_FOUND)


def _decrypt_key(dek: bytes, value: bytes) -> bytes:
    """Key data of PUT KEY: ``<enc>`` or ``<len><enc>`` (both encodings seen in the field)."""
    if len(value) in _KEY_LENGTHS and len(value) % 16 == 0:
        return decrypt_sensitive(dek, value)
    if value and value[0] in _KEY_LENGTHS and len(value) - 1 == -(-value[0] // 16) * 16:
        return decrypt_sensitive(dek, value[1:])[: value[0]]
    raise ApduError(SW.WRONG_DATA)


def _lv_fields(data: bytes, count: int) -> list[bytes]:
    out, off = [], 0
    for _ in range(count):
        if off >= len(data):
            raise ApduError(SW.WRONG_DATA)
        n = data[off]
        if off + 1 + n > len(data):
            raise ApduError(SW.WRONG_DATA)
        out.append(data[off + 1 : off + 1 + n])
        off += 1 + n
    if off != len(data):
        raise ApduError(SW.WRONG_DATA)
    return out


def _status_entry(e: RegistryEntry, tagged: bool, *, with_links: bool) -> bytes:
    privileges = e.privileges.to_bytes(3, "big")
    if not tagged:
        return bytes([len(e.aid)]) + e.aid + bytes([e.life_cycle, privileges[0]])
    body = (
        tlv(gp.TAG_AID, e.aid)
        + tlv(gp.TAG_LIFE_CYCLE, bytes([e.life_cycle]))
        + tlv(gp.TAG_PRIVILEGES, privileges)
    )
    if with_links:
        if e.elf_aid:
            body += tlv(gp.TAG_ELF_AID, e.elf_aid)
        body += tlv(gp.TAG_ASSOCIATED_SD, e.sd_aid)
    return tlv(gp.TAG_GP_REGISTRY_ENTRY, body)


def _elf_entry(elf: bytes, modules: list[bytes], tagged: bool, with_modules: bool) -> bytes:
    if not tagged:
        out = bytes([len(elf)]) + elf + bytes([gp.ELF_LOADED, 0x00])
        if with_modules:
            out += bytes([len(modules)]) + b"".join(bytes([len(m)]) + m for m in modules)
        return out
    body = (
        tlv(gp.TAG_AID, elf)
        + tlv(gp.TAG_LIFE_CYCLE, bytes([gp.ELF_LOADED]))
        + tlv(gp.TAG_ASSOCIATED_SD, gp.ISD_AID)
    )
    if with_modules:
        body += b"".join(tlv(0x84, m) for m in modules)
    return tlv(gp.TAG_GP_REGISTRY_ENTRY, body)


__all__ = ["CardOs", "IssuerSecurityDomain"]
