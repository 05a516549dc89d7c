"""GlobalPlatform Card Specification 2.3.1 vocabulary (and Amendment D, SCP03).

Scope: AIDs, instructions, P1/P2 coding, life cycle states, privileges, data object tags, key
types, security levels, and the DGIs our Issuer Security Domain accepts in STORE DATA.
Constants only; the card (``iotid.se.isd``) and the host (``iotid.host.securitydomain``) share them.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag, unique

#: Issuer Security Domain AID (GPC 2.3.1 section 11.1.1, the GP default ISD AID).
ISD_AID = bytes.fromhex("A000000151000000")
#: GlobalPlatform RID, for partial SELECT.
GP_RID = bytes.fromhex("A000000151")


@unique
class GpIns(IntEnum):
    """GPC 2.3.1 Table 11-10 and Amendment D Table 7-1."""

    DELETE = 0xE4
    GET_DATA = 0xCA
    GET_DATA_ODD = 0xCB
    GET_STATUS = 0xF2
    INSTALL = 0xE6
    LOAD = 0xE8
    PUT_KEY = 0xD8
    SET_STATUS = 0xF0
    STORE_DATA = 0xE2
    INITIALIZE_UPDATE = 0x50
    EXTERNAL_AUTHENTICATE = 0x82
    BEGIN_RMAC_SESSION = 0x7A
    END_RMAC_SESSION = 0x78


@unique
class CardLifeCycle(IntEnum):
    """GPC 2.3.1 section 5.1.1, Table 11-6."""

    OP_READY = 0x01
    INITIALIZED = 0x07
    SECURED = 0x0F
    CARD_LOCKED = 0x7F
    TERMINATED = 0xFF


@unique
class AppLifeCycle(IntEnum):
    """GPC 2.3.1 section 5.3, Table 11-5 (application) and 11-4 (security domain)."""

    INSTALLED = 0x03
    SELECTABLE = 0x07
    PERSONALIZED = 0x0F  # security domains; applets use 0x07 | their own bits b4..b7
    LOCKED = 0x83


#: ELF life cycle LOADED (GPC 2.3.1 Table 11-3).
ELF_LOADED = 0x01
#: Bit b8 of an application life cycle byte: LOCKED.
APP_LOCKED_BIT = 0x80


@unique
class Privilege(IntFlag):
    """First privilege byte (GPC 2.3.1 Table 11-7)."""

    SECURITY_DOMAIN = 0x80
    DAP_VERIFICATION = 0x40
    DELEGATED_MANAGEMENT = 0x20
    CARD_LOCK = 0x10
    CARD_TERMINATE = 0x08
    CARD_RESET = 0x04  # default selected
    CVM_MANAGEMENT = 0x02
    MANDATED_DAP = 0x01


ISD_PRIVILEGES = (
    Privilege.SECURITY_DOMAIN
    | Privilege.CARD_LOCK
    | Privilege.CARD_TERMINATE
    | Privilege.CARD_RESET
    | Privilege.CVM_MANAGEMENT
)


@unique
class SecurityLevel(IntFlag):
    """EXTERNAL AUTHENTICATE P1 (Amendment D Table 7-6) and the GP API Current Security Level."""

    NONE = 0x00
    C_MAC = 0x01
    C_DECRYPTION = 0x02
    R_MAC = 0x10
    R_ENCRYPTION = 0x20
    AUTHENTICATED = 0x80


#: Security levels EXTERNAL AUTHENTICATE accepts (Amendment D Table 7-6).
VALID_SECURITY_LEVELS = frozenset({0x00, 0x01, 0x03, 0x11, 0x13, 0x33})

#: SCP identifier and the "i" parameter bits (Amendment D Table 5-1).
SCP03 = 0x03
I_S16 = 0x01
I_PSEUDO_RANDOM_CHALLENGE = 0x10
I_RMAC = 0x20
I_RENC = 0x40
#: Our default "i": S8, pseudo-random challenge, R-MAC and R-ENC supported.
DEFAULT_I = I_PSEUDO_RANDOM_CHALLENGE | I_RMAC | I_RENC
#: Sequence counter width (Amendment D section 6.2.2.1).
SEQUENCE_COUNTER_MAX = 0xFFFFFF

#: Key version of the GP test key set on a fresh card.
TEST_KEY_VERSION = 0x30
#: Key identifiers of an SCP03 key set: Key-ENC, Key-MAC, Key-DEK.
KEY_ID_ENC = 0x01
KEY_ID_MAC = 0x02
KEY_ID_DEK = 0x03


@unique
class KeyType(IntEnum):
    """Key type coding (GPC 2.3.1 Table 11-16)."""

    DES = 0x80
    AES = 0x88
    ECC_PUBLIC = 0xB0
    ECC_PRIVATE = 0xB1
    ECC_PARAMS = 0xF0


#: PUT KEY P2 bit: several keys in one command (GPC 2.3.1 section 11.8.2.3).
PUT_KEY_MULTIPLE = 0x80
#: DELETE KEY tags (GPC 2.3.1 Table 11-24).
TAG_DELETE_KEY_ID = 0xD0
TAG_DELETE_KEY_VERSION = 0xD2
#: DELETE P2 bit: delete the object and related objects.
DELETE_RELATED = 0x80
#: DELETE tag for an application/ELF AID.
TAG_DELETE_AID = 0x4F


@unique
class DataTag(IntEnum):
    """GET DATA tags the ISD serves (GPC 2.3.1 section 11.3.3, Table 11-29; H.2)."""

    IIN = 0x0042
    CIN = 0x0045
    CARD_RECOGNITION_DATA = 0x0066
    KEY_INFORMATION = 0x00E0
    SEQUENCE_COUNTER = 0x00C1
    KEY_DIVERSIFICATION_DATA = 0x00CF
    CPLC = 0x9F7F


#: Key information template entry tag (C0: key id, KVN, type, length).
TAG_KEY_INFO = 0xC0
#: Card recognition data inner template.
TAG_CARD_DATA = 0x73

# GET STATUS (GPC 2.3.1 section 11.4).
GET_STATUS_ISD = 0x80
GET_STATUS_APPS = 0x40
GET_STATUS_ELF = 0x20
GET_STATUS_ELF_MODULES = 0x10
GET_STATUS_NEXT = 0x01
GET_STATUS_TAGGED = 0x02
TAG_GP_REGISTRY_ENTRY = 0xE3
TAG_AID = 0x4F
TAG_LIFE_CYCLE = 0x9F70
TAG_PRIVILEGES = 0xC5
TAG_ASSOCIATED_SD = 0xCC
TAG_ELF_AID = 0xC4

# SET STATUS P1 (GPC 2.3.1 Table 11-57).
SET_STATUS_ISD = 0x80
SET_STATUS_APP = 0x40
SET_STATUS_SD_AND_APPS = 0x60

# INSTALL P1 (GPC 2.3.1 Table 11-42).
INSTALL_FOR_PERSONALIZATION = 0x20
INSTALL_FOR_INSTALL = 0x04
INSTALL_FOR_MAKE_SELECTABLE = 0x08

# STORE DATA P1 (GPC 2.3.1 Table 11-90).
STORE_LAST_BLOCK = 0x80
STORE_ENC_MASK = 0x60
STORE_ENC_NONE = 0x00
STORE_ENC_APPLICATION = 0x20
STORE_ENC_ENCRYPTED = 0x60
STORE_FORMAT_MASK = 0x18
STORE_FORMAT_NONE = 0x00
STORE_FORMAT_DGI = 0x08
STORE_FORMAT_BER = 0x10


@unique
class IsdDgi(IntEnum):
    """Data groupings the ISD itself accepts in STORE DATA (DGI format).

    DGIs 8000-8FFF carry secrets and must arrive encrypted under Key-DEK (AES-CBC, zero ICV), the
    convention of the EMV/GP Common Personalization Specification.
    """

    IIN = 0x0042
    CIN = 0x0045
    #: A whole SCP03 key set: KVN(1) || Key-ENC || Key-MAC || Key-DEK (padded, under Key-DEK).
    SCP03_KEY_SET = 0x8F01


#: DGIs at or above this value carry secrets (encrypted under Key-DEK).
DGI_SECRET_MIN = 0x8000
DGI_SECRET_MAX = 0x8FFF

# Card recognition data (GPC 2.3.1 Annex H.2): OIDs under {1 2 840 114283}.
OID_GP_RID = bytes.fromhex("2A864886FC6B01")
OID_CARD_MGMT = bytes.fromhex("2A864886FC6B02")
OID_CARD_ID_SCHEME = bytes.fromhex("2A864886FC6B03")
OID_SCP = bytes.fromhex("2A864886FC6B04")
GP_VERSION = bytes([2, 3, 1])
