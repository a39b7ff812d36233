"""real traffic and staff: per-region intake, alert links, transfers, quarantine notices

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 09:10:00

Each feature adds its operations in its own delimited section below (``# <feature>`` …
``# end <feature>``); each section undoes its own in downgrade().
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
