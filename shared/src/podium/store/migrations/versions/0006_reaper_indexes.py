"""indexes for the reaper's scans

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25 20:05:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_calls", schema=None) as batch_op:
        batch_op.create_index("ix_agent_calls_status_created", ["status", "created_at"])
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.create_index("ix_runs_finished_at", ["finished_at"])


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_finished_at")
    with op.batch_alter_table("agent_calls", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_calls_status_created")
