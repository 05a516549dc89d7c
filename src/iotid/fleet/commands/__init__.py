"""The commands slice: operator commands encrypted to a device's identity key, fetched by it.

Scope: re-exports of :mod:`iotid.fleet.commands.service`. Not in scope: the routes (``api``:
operators create; ``gateway``: devices fetch and acknowledge), SQL (``repository``).
"""

from __future__ import annotations

from iotid.fleet.commands.service import (
    MAX_PLAINTEXT,
    CommandService,
    CommandView,
    CreatedCommand,
)

__all__ = ["MAX_PLAINTEXT", "CommandService", "CommandView", "CreatedCommand"]
