"""what each agent call actually ran with; the context budget that is enforced

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 18:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("agent_calls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("used", sa.JSON(), nullable=True))
    # Contexts were created with a budget nothing enforced (8000); the enforced one was the
    # deployment's orchestrator_token_budget. Unknown here, so the old default is kept on old
    # rows, and new rows are written with the enforced budget.


def downgrade() -> None:
    with op.batch_alter_table("agent_calls", schema=None) as batch_op:
        batch_op.drop_column("used")
