"""bulletin fan-out owner: a starting daemon resumes only the fan-outs of dead processes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 02:10:00

At start-up the daemon put every bulletin left ``sending`` back to ``approved`` and fanned it out
again, even one a live ``bulletin send --yes`` was still fanning out (an outside tester restarted
the daemon meanwhile: two fan-outs of one bulletin, an ERROR on the unique recipient constraint),
or, on PostgreSQL, another live instance. The owner (``<host>:<pid>``) is now recorded; rows from
before this revision have none and are resumed as before.
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('bulletins', schema=None) as batch_op:
        batch_op.add_column(sa.Column('fan_out_owner', sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('bulletins', schema=None) as batch_op:
        batch_op.drop_column('fan_out_owner')
