"""Canonical JSON: the one encoding every hash-chained log of iotid is computed over.

Scope: the bytes of a JSON value with sorted keys, no insignificant whitespace, ASCII only and
no NaN/Infinity, so that the factory's ceremony record and the fleet's audit log hash the same
value to the same bytes on any machine. Not in scope: the logs themselves.
"""

from __future__ import annotations

import json
from typing import Any


class CanonicalJsonError(ValueError):
    """The value cannot be represented as canonical JSON."""


def canonical_json(value: Any) -> bytes:
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise CanonicalJsonError(f"not representable as canonical JSON: {exc}") from None
    return text.encode("ascii")
