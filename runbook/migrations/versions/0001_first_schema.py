"""The journal's first schema: incidents, the actions taken in them, the notifications sent.

As runbook/journal.py created it until the schema changed (tests/fixtures/journal_schema_v1.sql is its
SQLite DDL). A journal made then has no alembic_version table; runbook.journal.migrate() stamps it with
this revision before upgrading it.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("alert", sa.String(64), nullable=False),
        sa.Column("bot", sa.String(128), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("fired_at", sa.DateTime(), nullable=False),
        sa.Column("last_fired_at", sa.DateTime(), nullable=False),
        sa.Column("response_started_at", sa.DateTime(), nullable=True),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("repeat_count", sa.Integer(), nullable=False),
        sa.Column("escalation_level", sa.String(4), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("slack_channel", sa.String(64), nullable=True),
        sa.Column("slack_ts", sa.String(32), nullable=True),
        sa.Column("open_key", sa.String(200), nullable=True, unique=True),
    )
    op.create_index("ix_incidents_alert", "incidents", ["alert"])
    op.create_index("ix_incidents_bot", "incidents", ["bot"])
    op.create_index("ix_incidents_fired_at", "incidents", ["fired_at"])
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("incident_id", sa.Integer(), sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("bot", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("step", sa.String(64), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_actions_incident_id", "actions", ["incident_id"])
    op.create_index("ix_actions_at", "actions", ["at"])
    op.create_index("ix_actions_bot_step_at", "actions", ["bot", "step", "at"])
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("incident_id", sa.Integer(), sa.ForeignKey("incidents.id"), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("status_line", sa.String(32), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("ts", sa.String(32), nullable=True),
    )
    op.create_index("ix_notifications_incident_id", "notifications", ["incident_id"])


def downgrade() -> None:
    op.drop_table("notifications")
    op.drop_table("actions")
    op.drop_table("incidents")
