"""speed (issue 19): indexes and tables of the throughput work

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 12:00:00

Each helper adds its operations in its own delimited section below (``# <TAG>`` … ``# end <TAG>``);
each section undoes its own in downgrade(), in reverse order.
"""
from alembic import op
import sqlalchemy as sa  # noqa: F401  (sections use it)


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # PROCESSING (issue 19): per-message lookups stay flat as open cases grow (benchmarks/processing.py).
    with op.batch_alter_table('auto_reply_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_auto_reply_log_case_id'), ['case_id'], unique=False)
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_cases_origin_message_id'), ['origin_message_id'], unique=False)
    # end PROCESSING
    # PRIORITY (issue 19): staff commands and ACSS alerts before a burst of declarations; existing rows 0.
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
        batch_op.create_index('ix_inbound_pending', ['status', 'priority', 'id'], unique=False)
    # end PRIORITY


def downgrade() -> None:
    # PRIORITY
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_pending')
        batch_op.drop_column('priority')
    # end PRIORITY
    # PROCESSING
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_cases_origin_message_id'))
    with op.batch_alter_table('auto_reply_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_auto_reply_log_case_id'))
    # end PROCESSING
