"""Composition of the core services from settings, shared by the CLI and the daemon.

Nothing here starts a thread or a server; ``daemon`` owns the lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mailgateway.cases.timeline import append_event
from mailgateway.clock import Clock, SystemClock
from mailgateway.directory.staff import StaffDirectory
from mailgateway.dispatch.compose import Composer
from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.dispatch.mailer import Mailer
from mailgateway.dispatch.render import Renderer
from mailgateway.dns import TxtResolver
from mailgateway.mail.auth import Authenticator, build_authenticator
from mailgateway.mail.context import build_context
from mailgateway.processing.context import Env
from mailgateway.processing.runner import Processor
from mailgateway.settings import Settings
from mailgateway.store.engine import ensure_schema, make_engine, make_sessionmaker
from mailgateway.store.installation import MESSAGE_ID_SECRET, load_secret


@dataclass
class App:
    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    clock: Clock
    renderer: Renderer
    composer: Composer
    mailer: Mailer
    authenticator: Authenticator
    env: Env
    processor: Processor

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration (SIGHUP), in force for everything built here from the next
        message on. The database, listeners and keys are the caller's to keep."""
        self.settings = settings
        self.env.settings = settings
        self.mailer.settings = settings
        self.mailer.staff = StaffDirectory(settings)
        self.processor.settings = settings
        self.renderer = Renderer(settings.outbound.templates_dir)
        self.composer.renderer = self.renderer

    def close(self) -> None:
        self.engine.dispose()


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    resolver: TxtResolver | None = None,
    migrate: bool = True,
) -> App:
    clock = clock or SystemClock()
    if migrate:
        ensure_schema(settings.database.url)
    engine = make_engine(settings.database.url)
    factory = make_sessionmaker(engine)
    renderer = Renderer(settings.outbound.templates_dir)
    ctx = build_context(settings)
    # Loaded now, in its own transaction: composing happens inside write transactions, where a
    # second writer (SQLite) would wait on the first.
    id_secret = load_secret(factory, MESSAGE_ID_SECRET)
    composer = Composer(renderer, DkimSigner.from_settings(settings.dkim), clock,
                        domain=settings.bounce_domain, loop_token=ctx.loop_token, id_secret=id_secret)
    mailer = Mailer(settings, composer, clock, staff=StaffDirectory(settings), journal=append_event)
    authenticator = build_authenticator(settings, resolver)
    env = Env(settings=settings, mailer=mailer, clock=clock)
    processor = Processor(settings, factory, clock, authenticator, env)
    return App(settings, engine, factory, clock, renderer, composer, mailer, authenticator, env, processor)

