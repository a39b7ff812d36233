"""Alembic environment: the URL comes from the caller's config, never from a file here."""

from __future__ import annotations

from alembic import context

from mailgateway.store.engine import make_engine
from mailgateway.store.models import Base

config = context.config
url = config.get_main_option("sqlalchemy.url") or "sqlite://"


def run_migrations_online() -> None:
    engine = make_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            # APScheduler owns its job table.
            include_name=lambda name, type_, _p: not (type_ == "table" and name == "apscheduler_jobs"),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
