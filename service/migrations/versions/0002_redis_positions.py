"""redis_positions: the durable high-water mark of Redis data (service/fence.py)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "redis_positions",
        sa.Column("prefix", sa.String(200), primary_key=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("gen", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("redis_positions")
