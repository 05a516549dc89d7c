"""No private or secret key reaches a repr, the CLI, an error or the card's public facts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from iotid.cli.main import app
from iotid.host import SecurityDomainSession
from iotid.scp03 import StaticKeys
from iotid.se import Card
from iotid.se.keystore import KeyStore
from iotid.spec.algorithms import KeyAlg
from iotid.transport.loopback import LoopbackConnection

TEST_KEY_HEX = bytes(range(0x40, 0x50)).hex()


def test_reprs_redact_keys() -> None:
    card = Card.create(None, uid=bytes(10))
    sd = SecurityDomainSession(LoopbackConnection(card))
    sd.authenticate(StaticKeys.gp_test_keys())
    for obj in (card, card.keys, StaticKeys.gp_test_keys(), sd, sd.protocol.channel, card.info()):
        text = repr(obj).lower()
        assert TEST_KEY_HEX not in text
        assert "@abcdefghijklmno" not in text


def test_private_keys_stay_in_their_slot() -> None:
    card = Card.create(None, uid=bytes(10))
    store: KeyStore = card.keys
    with card.nvm.transaction():
        public = store.generate("probe", KeyAlg.EC_P256)
    # The only way out of a slot is the public key and signatures.
    assert not any(name for name in dir(store) if "export" in name or "private_bytes" in name)
    assert public.public_numbers().curve.name == "secp256r1"
    assert "probe" in repr(store.slots())
    assert "PRIVATE" not in repr(store.slots()).upper()


def test_cli_info_prints_public_facts_only(tmp_path: Path) -> None:
    runner = CliRunner()
    state = tmp_path / "card"
    result = runner.invoke(app, ["se", "new", str(state), "--uid", "00112233445566778899"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["se", "info", str(state)])
    assert result.exit_code == 0, result.output
    assert "00112233445566778899" in result.output
    assert "GP TEST KEYS" in result.output
    assert TEST_KEY_HEX not in result.output.lower()


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["se", "info", str(tmp_path / "nothing")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())  # rich wraps to the terminal width
    assert "holds no card" in text
    result = runner.invoke(app, ["se", "new", str(tmp_path / "c"), "--uid", "0011"])
    assert result.exit_code == 2
    assert "UID must be 10 bytes" in " ".join(result.output.split())
