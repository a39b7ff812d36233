"""juridique: establishments found by their FINESS EJ through an index

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 07:20:00

A declaration whose number is not a géographique one (an EJ, or a number the directory does not
know) is looked up by ``finess_ej`` (processing/handlers.py ``_establishment``). Without an index
that read every row of the directory — about 100,000 with the national extraction — once per
such declaration.
"""
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('establishments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_establishments_finess_ej'), ['finess_ej'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('establishments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_establishments_finess_ej'))
