"""caps: automatic replies to a verified address are capped apart (forged mail in a declarant's name)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 21:40:00

An outside tester sent five unsigned declarations with ``From:`` a hospital's address (each
acknowledged, summary only, as the guarantees say), then one genuine declaration DKIM-signed by
that address: its acknowledgement was refused by the per-recipient cap the forgeries had used up.
``auto_reply_log.verified`` marks replies sent to the very address that authenticated the message
they answer; the per-recipient caps count the two kinds apart (dispatch/mailer.py). Existing rows:
not verified (the stricter reading).
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('auto_reply_log', schema=None) as batch_op:
        batch_op.add_column(sa.Column('verified', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('auto_reply_log', schema=None) as batch_op:
        batch_op.drop_column('verified')
