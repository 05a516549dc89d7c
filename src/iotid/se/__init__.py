"""The secure element emulator, sans-IO: ``Card.process(apdu: bytes) -> bytes``.

Modules: ``card`` (card OS), ``nvm`` (atomic persistent store), ``keystore`` (non-extractable
slots), ``registry`` (GP registry and life cycles), ``keysets`` and ``securechannel`` (SCP03 on
the card side), ``isd`` (Issuer Security Domain), ``applet`` (base class), ``applets/`` (the
identity applets). Never imports ``host``, ``transport`` or ``cli``.
"""

from iotid.se.card import ATR, Card, CardInfo
from iotid.se.nvm import Nvm, NvmError

__all__ = ["ATR", "Card", "CardInfo", "Nvm", "NvmError"]
