"""what each agent call actually ran with; outbox rows claimed by a sweeper; the context
budget that is enforced

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
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True))
    # Contexts used to keep the column's default (8000), which nothing enforced: the budget
    # enforced was orchestrator_token_budget, 20000 unless configured. Budgets are now read
    # from the context, so old rows get the enforced default (a deployment that configured
    # another budget can set it with one UPDATE); new rows are written with the setting.
    op.execute("UPDATE orchestration_contexts SET token_budget = 20000 WHERE token_budget = 8000")


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("claimed_until")
    with op.batch_alter_table("agent_calls", schema=None) as batch_op:
        batch_op.drop_column("used")
