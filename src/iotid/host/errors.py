"""Typed errors of the host shim.

Scope: what the host raises besides :class:`iotid.apdu.ApduError` (a status word from the card)
and :class:`iotid.transport.TransportError` (the bus failed). Messages never carry key material.
"""

from __future__ import annotations


class HostError(Exception):
    """Base of host-side failures that are not a status word."""


class BadResponseError(HostError):
    """The card's answer is malformed or fails its R-MAC / cryptogram check."""


class AuthenticationError(HostError):
    """The card cryptogram did not verify: the card does not hold this key set."""
