"""The applet base class of the emulated card OS.

Scope: what every applet shares: a handler table keyed by the ``spec/`` instruction enums (built
with the :func:`handles` decorator), the CLA class a handler accepts, scoped persistent records,
the services the card OS offers an applet (:class:`CardServices`), and the personalisation hook
that the security domain calls for STORE DATA. Handlers return response data (status 9000), or a
:class:`~iotid.apdu.ResponseApdu` for a warning status (62xx/63xx, which still gets an R-MAC);
errors are raised as :class:`~iotid.apdu.ApduError` and roll back every NVM write of the APDU.

Not in scope: APDU framing, chaining and GET RESPONSE (``iotid.se.card``), secure messaging
(``iotid.se.securechannel``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from iotid.apdu import ApduError, CommandApdu, ResponseApdu
from iotid.spec.iso7816 import CLA_PROPRIETARY, SW

if TYPE_CHECKING:
    from iotid.se.keystore import KeyStore
    from iotid.se.nvm import Nvm

Reply = bytes | ResponseApdu
Handler = Callable[["Applet", CommandApdu], Reply]
H = TypeVar("H", bound=Callable[..., Reply])


class ClaClass(IntEnum):
    """Which CLA a handler accepts (after secure messaging has been removed)."""

    ANY = 0
    INTERINDUSTRY = 1  # 0x00..0x0F
    PROPRIETARY = 2  # 0x80..0x8F (GlobalPlatform)


def handles(ins: IntEnum, *, cla: ClaClass = ClaClass.ANY) -> Callable[[H], H]:
    """Mark a method as the handler of ``ins`` (a ``spec/`` enum member)."""

    def mark(fn: H) -> H:
        fn.__dict__.setdefault("_iotid_handles", []).append((int(ins), cla))
        return fn

    return mark


class CardServices(Protocol):
    """What the card OS offers its applets (GP API's GPSystem/SecureChannel, in short)."""

    @property
    def uid(self) -> bytes: ...

    @property
    def card_life_cycle(self) -> int: ...

    def app_life_cycle(self, aid: bytes) -> int: ...

    def set_app_life_cycle(self, aid: bytes, state: int) -> None: ...

    def security_level(self) -> int:
        """Current Security Level of the secure channel (GP API), 0 when none."""
        ...


@dataclass
class AppletContext:
    """Everything an applet instance may touch."""

    nvm: Nvm
    keys: KeyStore
    services: CardServices


class Applet:
    """Base class: subclasses set ``AID`` and ``NAME``; handlers carry :func:`handles`."""

    AID: ClassVar[bytes]
    NAME: ClassVar[str]
    #: Privileges byte recorded in the GP registry.
    PRIVILEGES: ClassVar[int] = 0x00
    #: Life cycle when the card is created (ROM applets are installed and selectable).
    INITIAL_LIFE_CYCLE: ClassVar[int] = 0x07
    #: Commands arrive through the security domain's secure channel (wrapped/unwrapped there).
    SECURE_MESSAGING: ClassVar[bool] = False
    _handlers: ClassVar[dict[int, tuple[Callable[..., Reply], ClaClass]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        table: dict[int, tuple[Callable[..., Reply], ClaClass]] = {}
        for base in reversed(cls.__mro__):
            for attr in vars(base).values():
                for ins, cla in getattr(attr, "_iotid_handles", ()):
                    table[ins] = (attr, cla)
        cls._handlers = table

    def __init__(self, ctx: AppletContext) -> None:
        self.ctx = ctx

    def __repr__(self) -> str:
        return f"{type(self).__name__}(aid={self.AID.hex().upper()})"

    # -- records scoped to this applet ---------------------------------------------------------
    def load(self, name: str) -> bytes | None:
        return self.ctx.nvm.get(f"app/{self.NAME}/{name}")

    def store(self, name: str, value: bytes) -> None:
        self.ctx.nvm.put(f"app/{self.NAME}/{name}", value)

    def erase(self, name: str) -> None:
        self.ctx.nvm.delete(f"app/{self.NAME}/{name}")

    def slot(self, name: str) -> str:
        """Key store slot name scoped to this applet."""
        return f"{self.NAME}.{name}"

    # -- life cycle hooks ----------------------------------------------------------------------
    def on_install(self) -> None:
        """Called once, inside the card-creation transaction."""

    def on_select(self) -> bytes:
        """Returns the FCI (or nothing). Raise ApduError to refuse selection."""
        return b""

    def on_deselect(self) -> None:
        """Called when another application is selected or the card is reset."""

    # -- dispatch ------------------------------------------------------------------------------
    def process(self, cmd: CommandApdu) -> Reply:
        entry = self._handlers.get(cmd.ins)
        if entry is None:
            raise ApduError(SW.INS_NOT_SUPPORTED)
        fn, cla = entry
        proprietary = bool(cmd.cla & CLA_PROPRIETARY)
        if (cla is ClaClass.PROPRIETARY and not proprietary) or (
            cla is ClaClass.INTERINDUSTRY and proprietary
        ):
            raise ApduError(SW.CLA_NOT_SUPPORTED)
        return fn(self, cmd)

    # -- personalisation through the security domain (GPC 2.3.1 section 11.11) -----------------
    def store_data(self, dgi: int, value: bytes) -> None:
        """One DGI from STORE DATA after INSTALL [for personalization]; secrets arrive decrypted."""
        raise ApduError(SW.FUNCTION_NOT_SUPPORTED)

    def end_personalisation(self) -> None:
        """The last STORE DATA block has been processed."""
