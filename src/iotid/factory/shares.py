"""M-of-N custody of a key store's master secret with SLIP-39 shares (``shamir-mnemonic``).

Scope: splitting a 16- or 32-byte master secret into N mnemonic shares of which any M recover it
(one SLIP-39 group, no passphrase), recombining them with errors that say exactly what is wrong
(too few shares, a share that is not a valid SLIP-39 mnemonic, a share of another ceremony, the
same share twice, shares that do not combine), and the one-share-per-file format custodians keep.
The secret sharing, its checksums (RS1024) and its digest check are ``shamir-mnemonic``'s; this
module is glue and never does arithmetic on shares.

Share words are secrets: they never appear in a ``repr``, a log line or an exception message
(errors name a share by its position in the list given, 1-based, and ``shamir-mnemonic``'s own
messages, which quote the first words of a share, are never passed on).
Not in scope: what the secret protects (``softstore``, ``hsmstore``), the ceremony record.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shamir_mnemonic import MnemonicError, Share, generate_mnemonics, recover_ems
from shamir_mnemonic.shamir import ShareGroup

from iotid.factory.keystore import QuorumError

#: SLIP-39 allows at most 16 members in a group.
MAX_SHARES = 16
SECRET_LENGTHS = (16, 32)
_BEGIN = "-----BEGIN IOTID SLIP-39 SHARE-----"
_END = "-----END IOTID SLIP-39 SHARE-----"
_FILE_MAGIC = "# iotid key-ceremony share"


@dataclass(frozen=True)
class ShareSet:
    """The N shares of one split. ``identifier`` is SLIP-39's public 15-bit split identifier."""

    identifier: int
    threshold: int
    count: int
    mnemonics: tuple[str, ...] = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"ShareSet(identifier={self.identifier:#06x}, quorum={self.threshold}-of-"
            f"{self.count}, mnemonics=<redacted>)"
        )

    __str__ = __repr__


@dataclass(frozen=True)
class ShareInfo:
    """Public metadata of one share (no secret): its split, its 1-based index, the threshold."""

    identifier: int
    index: int
    threshold: int


def check_quorum(threshold: int, count: int) -> None:
    """ValueError unless ``threshold``-of-``count`` is a quorum SLIP-39 can express."""
    if not 1 <= count <= MAX_SHARES:
        raise ValueError(f"the number of shares must be between 1 and {MAX_SHARES}, not {count}")
    if not 1 <= threshold <= count:
        raise ValueError(f"the quorum must be between 1 and {count}, not {threshold}")
    if threshold == 1 and count > 1:
        # SLIP-39 §"Generating and combining the shares": 1-of-N with N > 1 is refused.
        raise ValueError("SLIP-39 does not allow a 1-of-N quorum with N > 1; use 1-of-1 or M >= 2")


def split(secret: bytes, threshold: int, count: int) -> ShareSet:
    """Split ``secret`` (16 or 32 bytes) into ``count`` shares of which ``threshold`` recover it."""
    if len(secret) not in SECRET_LENGTHS:
        raise ValueError(f"the master secret must be 16 or 32 bytes, not {len(secret)}")
    check_quorum(threshold, count)
    # One group (group threshold 1), no passphrase; iteration exponent and the extendable flag are
    # the library's defaults (SLIP-39 §"Encryption of the master secret").
    (group,) = generate_mnemonics(1, [(threshold, count)], secret)
    identifier = Share.from_mnemonic(group[0]).identifier
    return ShareSet(identifier, threshold, count, tuple(group))


def _parse(mnemonic: str) -> Share | None:
    try:
        return Share.from_mnemonic(mnemonic)
    except (MnemonicError, ValueError, KeyError, IndexError):
        return None


def share_info(mnemonic: str) -> ShareInfo:
    """The public metadata of one share; QuorumError if it is not a valid SLIP-39 mnemonic."""
    share = _parse(mnemonic)
    if share is None:
        raise QuorumError("the share is not a valid SLIP-39 mnemonic")
    return ShareInfo(share.identifier, share.index + 1, share.member_threshold)


def combine(
    shares: Sequence[str], *, expected_identifier: int | None, count: int | None = None
) -> bytes:
    """Recover the master secret from M (or more) shares; QuorumError says what is wrong.

    ``expected_identifier``: the split identifier recorded by the ceremony (None: only require
    the shares to agree with each other). ``count`` (N, when the caller knows it) only improves
    the wording of the "too few shares" error. With more than M shares, all are checked for
    membership and duplicates and the first M are combined.
    """
    if not shares:
        raise QuorumError("no shares given")
    parsed: list[Share] = []
    for position, mnemonic in enumerate(shares, start=1):
        share = _parse(mnemonic)
        if share is None:
            raise QuorumError(f"share {position} is not a valid SLIP-39 mnemonic")
        if share.group_count != 1 or share.group_threshold != 1:
            raise QuorumError(f"share {position} is a multi-group SLIP-39 share, not a ceremony's")
        if expected_identifier is not None and share.identifier != expected_identifier:
            raise QuorumError(
                f"share {position} belongs to another ceremony (split identifier "
                f"{share.identifier:#06x}, this ceremony's is {expected_identifier:#06x})"
            )
        parsed.append(share)

    first = parsed[0]
    seen: dict[int, int] = {}
    for position, share in enumerate(parsed, start=1):
        if share.identifier != first.identifier:
            raise QuorumError(f"shares 1 and {position} come from different ceremonies")
        if share.group_parameters() != first.group_parameters():
            raise QuorumError(f"shares 1 and {position} do not belong to the same split")
        if share.index in seen:
            earlier = seen[share.index]
            if parsed[earlier - 1].value == share.value:
                raise QuorumError(f"share {position} is the same share as share {earlier}")
            raise QuorumError(
                f"shares {earlier} and {position} claim the same index but differ: "
                "one of them is corrupt"
            )
        seen[share.index] = position

    threshold = first.member_threshold
    if len(parsed) < threshold:
        of = f" of {count}" if count is not None else ""
        raise QuorumError(f"{threshold}{of} shares needed, {len(parsed)} given")

    group = ShareGroup()
    for share in parsed[:threshold]:
        group.add(share)
    secret: bytes | None
    try:
        # SLIP-39: interpolation plus the digest share check; then decryption (no passphrase).
        secret = bytes(recover_ems({first.group_index: group}).decrypt(b""))
    except (MnemonicError, ValueError):
        secret = None  # raised outside the handler so the library's message is not chained
    if secret is None:
        raise QuorumError(
            "the shares do not combine (digest check failed): one is corrupt or from another split"
        )
    return secret


def write_share_file(
    path: Path, index: int, mnemonic: str, ceremony_id: str, *, custodian: str | None = None
) -> None:
    """Write one custodian's share to ``path`` (created with mode 0600, never overwritten).

    ``index`` is the share's 1-based number (it must match the share); ``ceremony_id`` and
    ``custodian`` go in the header in clear, so they must be single-line.
    """
    info = share_info(mnemonic)
    if info.index != index:
        raise ValueError(f"this mnemonic is share {info.index}, not share {index}")
    for label, text in (("ceremony id", ceremony_id), ("custodian", custodian or "")):
        if re.search(r"[\r\n]", text):
            raise ValueError(f"the {label} must be a single line")
    holder = custodian or f"the custodian of share {index}"
    text = "\n".join(
        [
            _FILE_MAGIC,
            f"# ceremony: {ceremony_id}",
            f"# share: {index} (split identifier {info.identifier:#06x}; "
            f"any {info.threshold} shares of this ceremony unlock its root key)",
            f"# for: {holder}, and nobody else",
            "# Keep this file offline and in your own custody. NEVER store it, copy it or send it",
            "# next to another share of this ceremony: together they unlock the root key.",
            _BEGIN,
            " ".join(mnemonic.split()),
            _END,
            "",
        ]
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_share_file(path: Path) -> str:
    """The share mnemonic in a file written by :func:`write_share_file`."""
    try:
        lines = Path(path).read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise QuorumError(f"cannot read share file {path}: {type(exc).__name__}") from None
    stripped = [line.strip() for line in lines]
    if _BEGIN not in stripped or _END not in stripped:
        raise QuorumError(f"{path} is not an iotid share file")
    start, end = stripped.index(_BEGIN), stripped.index(_END)
    words = " ".join(" ".join(stripped[start + 1 : end]).split())
    if not words:
        raise QuorumError(f"{path} holds no share")
    return words.lower()


__all__ = [
    "MAX_SHARES",
    "SECRET_LENGTHS",
    "ShareInfo",
    "ShareSet",
    "check_quorum",
    "combine",
    "read_share_file",
    "share_info",
    "split",
    "write_share_file",
]
