"""later: staff notifications put off while a backlog is processed

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 16:53:21

During a burst, a declaration's acknowledgement goes first and its staff notification is composed
once the backlog is done (processing/later.py, issue 19): this table holds what is to be composed,
written in the transaction that processed the message, so a crash in between loses nothing.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('deferred_staff_notices',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('inbound_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_messages.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('deferred_staff_notices', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deferred_staff_notices_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_deferred_staff_notices_case_id'), ['case_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deferred_staff_notices', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deferred_staff_notices_case_id'))
        batch_op.drop_index(batch_op.f('ix_deferred_staff_notices_created_at'))
    op.drop_table('deferred_staff_notices')
