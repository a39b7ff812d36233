"""trust: replay guard, intake peer, audit anchors, installation secret

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 06:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # H5 (unguessable identifiers, bounce scoring): installation secret, bounce evidence.
    op.create_table('installation_secrets',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('secret', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('contact_bounces', schema=None) as batch_op:
        batch_op.add_column(sa.Column('evidence', sa.String(length=16), nullable=True))
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bounces_counted_since', sa.DateTime(timezone=True), nullable=True))
    # end H5
    # H6 (budgets): global auto-reply budget index, per-sender staff notification log.
    with op.batch_alter_table('auto_reply_log', schema=None) as batch_op:
        batch_op.create_index('ix_auto_reply_at', ['at'], unique=False)
    op.create_table('staff_notice_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('sender', sa.String(length=512), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('staff_notice_log', schema=None) as batch_op:
        batch_op.create_index('ix_staff_notice_sender_at', ['sender', 'at'], unique=False)
    # end H6
    # H2 (once only): keys of the command mails and alerts already acted on.
    op.create_table('replay_keys',
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('inbound_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_messages.id'], ),
    sa.PrimaryKeyConstraint('key')
    )
    with op.batch_alter_table('replay_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_replay_keys_inbound_id'), ['inbound_id'], unique=False)
    # end H2
    # H8 (audit): case state hashed into each event, per-region ledger anchoring case chain heads.
    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('state_hash', sa.String(length=64), nullable=True))
    op.create_table('audit_heads',
    sa.Column('region', sa.String(length=8), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('region')
    )
    op.create_table('audit_ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('region', sa.String(length=8), nullable=False),
    sa.Column('seq', sa.Integer(), nullable=False),
    sa.Column('case_reference', sa.String(length=32), nullable=False),
    sa.Column('event_seq', sa.Integer(), nullable=False),
    sa.Column('event_hash', sa.String(length=64), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('region', 'seq')
    )
    with op.batch_alter_table('audit_ledger', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_audit_ledger_case_reference'), ['case_reference'], unique=False)
    # end H8
    # H7 (intake): SMTP client IP of each inbound message.
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('peer', sa.String(length=64), nullable=True))
    # end H7
    # H9 (DNS retry): a message whose DKIM key lookup failed temporarily waits until retry_at.
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
    # end H9
    pass


def downgrade() -> None:
    # H9
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_column('retry_at')
    # end H9
    # H7
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_column('peer')
    # end H7
    # H2
    with op.batch_alter_table('replay_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_replay_keys_inbound_id'))
    op.drop_table('replay_keys')
    # end H2
    # H8
    with op.batch_alter_table('audit_ledger', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_audit_ledger_case_reference'))
    op.drop_table('audit_ledger')
    op.drop_table('audit_heads')
    with op.batch_alter_table('case_events', schema=None) as batch_op:
        batch_op.drop_column('state_hash')
    # end H8
    # H6
    with op.batch_alter_table('staff_notice_log', schema=None) as batch_op:
        batch_op.drop_index('ix_staff_notice_sender_at')
    op.drop_table('staff_notice_log')
    with op.batch_alter_table('auto_reply_log', schema=None) as batch_op:
        batch_op.drop_index('ix_auto_reply_at')
    # end H6
    # H5
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('bounces_counted_since')
    with op.batch_alter_table('contact_bounces', schema=None) as batch_op:
        batch_op.drop_column('evidence')
    op.drop_table('installation_secrets')
    # end H5
    pass
