"""The host shim: the only device code that talks to the secure element.

Modules: ``errors`` (typed errors), ``protocol`` (a yubikit-style protocol object whose
processors stack extended length or command chaining, 61xx/6Cxx response handling and SCP03),
``scp`` (opening an SCP03 session), ``securitydomain`` (the ISD session). The host never
imports the card (``iotid.se``): the two meet only in ``spec``, ``apdu`` and ``scp03``.
"""

from iotid.host.errors import AuthenticationError, BadResponseError, HostError
from iotid.host.protocol import SmartCardProtocol
from iotid.host.securitydomain import SecurityDomainSession

__all__ = [
    "AuthenticationError",
    "BadResponseError",
    "HostError",
    "SecurityDomainSession",
    "SmartCardProtocol",
]
