"""Balance highs (the new-balance-high flow) and when an incident's remediation was last triggered.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("incidents", sa.Column("triggered_at", sa.DateTime(), nullable=True))
    op.create_table(
        "balance_highs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("bot", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("balance", sa.String(64), nullable=False),
        sa.Column("previous", sa.String(64), nullable=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("incident_id", sa.Integer(), sa.ForeignKey("incidents.id"), nullable=True),
        sa.Column("config_backup", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_balance_highs_bot", "balance_highs", ["bot"])


def downgrade() -> None:
    op.drop_index("ix_balance_highs_bot", table_name="balance_highs")
    op.drop_table("balance_highs")
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("triggered_at")
