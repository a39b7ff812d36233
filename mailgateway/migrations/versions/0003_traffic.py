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
    # ROUTING (issue 16): intake deduplicated per receiving region, alert receipts per region.
    # SQLite's unique constraint on sha256 (0001) has no name: batch mode finds it by this convention.
    sqlite = op.get_bind().dialect.name == "sqlite"
    sha256_unique = "uq_inbound_messages_sha256" if sqlite else "inbound_messages_sha256_key"
    naming = {"uq": "uq_%(table_name)s_%(column_0_name)s"}
    with op.batch_alter_table('inbound_messages', schema=None, naming_convention=naming) as batch_op:
        batch_op.add_column(sa.Column('dedup_key', sa.String(length=80), nullable=True))
    op.execute("UPDATE inbound_messages SET dedup_key = sha256 || ':' || COALESCE(region, '-')")
    with op.batch_alter_table('inbound_messages', schema=None, naming_convention=naming) as batch_op:
        batch_op.alter_column('dedup_key', existing_type=sa.String(length=80), nullable=False)
        batch_op.drop_constraint(sha256_unique, type_='unique')
        batch_op.create_unique_constraint('uq_inbound_messages_dedup_key', ['dedup_key'])
        batch_op.create_index(batch_op.f('ix_inbound_messages_sha256'), ['sha256'], unique=False)
    op.create_table('alert_receipts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('reference', sa.String(length=100), nullable=False),
    sa.Column('region', sa.String(length=8), nullable=False),
    sa.Column('case_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('inbound_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], ),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_messages.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('alert_receipts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_alert_receipts_case_id'), ['case_id'], unique=False)
        batch_op.create_index('ix_alert_receipts_reference_region', ['reference', 'region'], unique=False)
    # end ROUTING
    # SILENT (issue 17, nothing fails silently): relay SIZE memory, quarantine notices and releases.
    op.create_table('relay_limits',
    sa.Column('relay', sa.String(length=255), nullable=False),
    sa.Column('size_bytes', sa.Integer(), nullable=True),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('relay')
    )
    op.create_table('quarantine_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('inbound_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('actor', sa.String(length=512), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['inbound_id'], ['inbound_messages.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('quarantine_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_quarantine_log_inbound_id'), ['inbound_id'], unique=False)
    # end SILENT


def downgrade() -> None:
    # SILENT
    with op.batch_alter_table('quarantine_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_quarantine_log_inbound_id'))
    op.drop_table('quarantine_log')
    op.drop_table('relay_limits')
    # end SILENT
    # ROUTING
    with op.batch_alter_table('alert_receipts', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_receipts_reference_region')
        batch_op.drop_index(batch_op.f('ix_alert_receipts_case_id'))
    op.drop_table('alert_receipts')
    # One row per content hash again: impossible once a message was stored for several regions
    # (each copy is referenced by its own case's timeline, which is hash-chained and not rewritten).
    copies = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM inbound_messages m WHERE EXISTS "
        "(SELECT 1 FROM inbound_messages o WHERE o.sha256 = m.sha256 AND o.id < m.id)")).scalar()
    if copies:
        raise RuntimeError(f"downgrade below 0003 impossible: {copies} message(s) stored for several regions")
    sqlite = op.get_bind().dialect.name == "sqlite"
    sha256_unique = "uq_inbound_messages_sha256" if sqlite else "inbound_messages_sha256_key"
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_inbound_messages_sha256'))
        batch_op.drop_constraint('uq_inbound_messages_dedup_key', type_='unique')
        batch_op.drop_column('dedup_key')
        batch_op.create_unique_constraint(sha256_unique, ['sha256'])
    # end ROUTING
