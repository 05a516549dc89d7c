"""Fixtures for the transport unit tests."""

from __future__ import annotations

import pytest
from transport_fakes import ScriptedCard


@pytest.fixture
def card() -> ScriptedCard:
    return ScriptedCard()
