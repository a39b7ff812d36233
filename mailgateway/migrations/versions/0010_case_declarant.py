"""case declarant: a declaration without FINESS finds its declarant's open cases by an index

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 18:40:00

A declaration that names no FINESS is matched with the open cases of its authenticated declarant
(cases/service._same_declarant): without an index, each such declaration read the whole cases
table (issue 19: what grows with the number of open cases is indexed). With the region: on the
declarant alone SQLite's planner still preferred ix_cases_region_status.
"""
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index('ix_cases_declarant_region', ['declarant', 'region'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index('ix_cases_declarant_region')
