"""contact domain: « is this signing domain in the directory? » by an index

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 19:55:00

Every authenticated message asks whether its signing domain is one of the directory's contacts'
(directory/known.py): ``address LIKE '%@domain'`` scanned the whole table, 8 ms a message at
40,000 contacts (issue 19). The domain part of each address now has its own indexed column, set at
insert (store/models.py) and filled here for the rows already there.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BATCH = 5000


def upgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('domain', sa.String(length=253), nullable=True))
        batch_op.create_index(batch_op.f('ix_contacts_domain'), ['domain'], unique=False)
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, address FROM contacts")).all()
    update = sa.text("UPDATE contacts SET domain = :domain WHERE id = :id")
    values = [{"id": row[0], "domain": (row[1].rpartition("@")[2].strip().lower().rstrip(".") or None)}
              for row in rows]
    for start in range(0, len(values), BATCH):
        bind.execute(update, values[start:start + BATCH])


def downgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_contacts_domain'))
        batch_op.drop_column('domain')
