"""Lifecycle: enrollment evidence, rotations, telemetry, commands, firmware, revocation events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time(name: str, *, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["device_id"],
        ["devices.id"],
        name=op.f(f"fk_{table}_device_id_devices"),
        ondelete="RESTRICT",
    )


def upgrade() -> None:
    with op.batch_alter_table("batches") as batch:
        batch.add_column(_time("revoked_at", nullable=True))
        batch.add_column(sa.Column("revocation_reason", sa.String(32), nullable=True))
    with op.batch_alter_table("devices") as batch:
        batch.add_column(
            sa.Column("group_name", sa.String(64), nullable=False, server_default="default")
        )
        batch.add_column(sa.Column("firmware_version", sa.String(64), nullable=True))
        batch.add_column(_time("enrolled_at", nullable=True))
        batch.add_column(_time("revoked_at", nullable=True))
        batch.add_column(_time("last_seen_at", nullable=True))
        batch.create_index(op.f("ix_devices_group_name"), ["group_name"])
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("key_epoch", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("spki_sha256", sa.String(64), nullable=False, server_default=""))
        batch.add_column(
            sa.Column("issuer_sha256", sa.String(64), nullable=False, server_default="")
        )
        batch.create_index(op.f("ix_certificates_spki_sha256"), ["spki_sha256"])
        batch.create_index(op.f("ix_certificates_issuer_sha256"), ["issuer_sha256"])

    op.create_table(
        "enrollments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("quote", sa.LargeBinary(), nullable=False),
        sa.Column("attestation_cert_sha256", sa.String(64), nullable=False),
        sa.Column("batch_ca_sha256", sa.String(64), nullable=False),
        sa.Column("key_epoch", sa.Integer(), nullable=False),
        sa.Column("spki_sha256", sa.String(64), nullable=False),
        sa.Column("certificate_serial", sa.String(42), nullable=False),
        _time("created_at"),
        _device_fk("enrollments"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollments")),
    )
    op.create_index(op.f("ix_enrollments_device_id"), "enrollments", ["device_id"])

    op.create_table(
        "rotations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("from_epoch", sa.Integer(), nullable=False),
        sa.Column("to_epoch", sa.Integer(), nullable=False),
        sa.Column("old_spki", sa.LargeBinary(), nullable=False),
        sa.Column("new_spki", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.String(128), nullable=False),
        sa.Column("proof", sa.LargeBinary(), nullable=False),
        sa.Column("quote", sa.LargeBinary(), nullable=False),
        sa.Column("ack", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        _time("created_at"),
        _time("completed_at", nullable=True),
        _device_fk("rotations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rotations")),
        sa.UniqueConstraint("device_id", "to_epoch", name=op.f("uq_rotations_device_id_to_epoch")),
    )
    op.create_index(op.f("ix_rotations_device_id"), "rotations", ["device_id"])
    op.create_index(op.f("ix_rotations_state"), "rotations", ["state"])

    op.create_table(
        "telemetry",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("key_epoch", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        _time("received_at"),
        _device_fk("telemetry"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_telemetry")),
    )
    op.create_index(op.f("ix_telemetry_device_id"), "telemetry", ["device_id"])
    op.create_index(op.f("ix_telemetry_received_at"), "telemetry", ["received_at"])

    op.create_table(
        "commands",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("key_epoch", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _time("created_at"),
        _time("delivered_at", nullable=True),
        _device_fk("commands"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_commands")),
    )
    op.create_index(op.f("ix_commands_device_id"), "commands", ["device_id"])

    op.create_table(
        "firmware_releases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_firmware_releases")),
        sa.UniqueConstraint("name", name=op.f("uq_firmware_releases_name")),
    )
    op.create_table(
        "firmware_assignments",
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("release_id", sa.Integer(), nullable=False),
        sa.Column("assigned_by", sa.String(128), nullable=False),
        _time("assigned_at"),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["firmware_releases.id"],
            name=op.f("fk_firmware_assignments_release_id_firmware_releases"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("group_name", name=op.f("pk_firmware_assignments")),
    )
    op.create_index(
        op.f("ix_firmware_assignments_release_id"), "firmware_assignments", ["release_id"]
    )

    op.create_table(
        "revocation_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("uids", sa.JSON(), nullable=False),
        sa.Column("serials", sa.JSON(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocation_events")),
    )
    op.create_index(op.f("ix_revocation_events_created_at"), "revocation_events", ["created_at"])


def downgrade() -> None:
    for table in (
        "revocation_events",
        "firmware_assignments",
        "firmware_releases",
        "commands",
        "telemetry",
        "rotations",
        "enrollments",
    ):
        op.drop_table(table)
    with op.batch_alter_table("certificates") as batch:
        batch.drop_index(op.f("ix_certificates_issuer_sha256"))
        batch.drop_index(op.f("ix_certificates_spki_sha256"))
        for column in ("issuer_sha256", "spki_sha256", "key_epoch"):
            batch.drop_column(column)
    with op.batch_alter_table("devices") as batch:
        batch.drop_index(op.f("ix_devices_group_name"))
        for column in (
            "last_seen_at",
            "revoked_at",
            "enrolled_at",
            "firmware_version",
            "group_name",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("batches") as batch:
        batch.drop_column("revocation_reason")
        batch.drop_column("revoked_at")
