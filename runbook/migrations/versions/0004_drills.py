"""Drills: one row per drill run, and the drill an incident belongs to (drill incidents stay out of the KPIs).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "drills",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("bot", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("active_until", sa.DateTime(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scenarios", sa.Text(), nullable=False),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("report_path", sa.Text(), nullable=True),
    )
    op.create_index("ix_drills_bot", "drills", ["bot"])
    op.add_column("incidents", sa.Column("drill_id", sa.Integer(), nullable=True))
    op.create_index("ix_incidents_drill_id", "incidents", ["drill_id"])


def downgrade() -> None:
    op.drop_index("ix_incidents_drill_id", table_name="incidents")
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("drill_id")
    op.drop_index("ix_drills_bot", table_name="drills")
    op.drop_table("drills")
