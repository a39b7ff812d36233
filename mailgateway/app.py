"""The composition root: services built from settings and wired together, for the CLI and the daemon.

``build_services`` builds what sends mail and runs features (database, rendering, composition,
the ``Mailer`` gate with its ports, the features' ``Env``); ``build_app`` adds the processing of
inbound mail (authenticator, runner). Nothing here starts a thread or a server; ``daemon`` owns
the lifecycle.
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
from mailgateway.mail.context import loop_token_for
from mailgateway.processing.context import Env
from mailgateway.processing.runner import Processor
from mailgateway.settings import Settings
from mailgateway.store.engine import ensure_schema, make_engine, make_sessionmaker
from mailgateway.store.installation import MESSAGE_ID_SECRET, load_secret


@dataclass
class Services:
    """Everything but the processing of inbound mail: the database, the clock, rendering and
    composition, the ``Mailer`` gate and the features' ``Env``. Scheduled jobs (a ``JobContext``),
    bulletins and the operator commands that only send need no more: no DNS resolver, no analysis."""

    settings: Settings
    engine: Engine
    factory: sessionmaker[Session]
    clock: Clock
    renderer: Renderer
    composer: Composer
    mailer: Mailer
    env: Env

    def reconfigure(self, settings: Settings) -> None:
        """A reloaded configuration (SIGHUP), in force for everything built here from the next
        message on. The database, listeners and keys are the caller's to keep."""
        self.settings = settings
        self.env.settings = settings
        self.mailer.settings = settings
        self.mailer.staff = StaffDirectory(settings)
        self.renderer = Renderer(settings.outbound.templates_dir)
        self.composer.renderer = self.renderer

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class App(Services):
    """The services plus the processing of inbound mail (the daemon, ``ingest``)."""

    authenticator: Authenticator
    processor: Processor

    def reconfigure(self, settings: Settings) -> None:
        super().reconfigure(settings)
        self.processor.settings = settings


def build_services(settings: Settings, *, clock: Clock | None = None, migrate: bool = True) -> Services:
    clock = clock or SystemClock()
    if migrate:
        ensure_schema(settings.database.url)
    engine = make_engine(settings.database.url)
    factory = make_sessionmaker(engine)
    renderer = Renderer(settings.outbound.templates_dir)
    # Loaded now, in its own transaction: composing happens inside write transactions, where a
    # second writer (SQLite) would wait on the first.
    id_secret = load_secret(factory, MESSAGE_ID_SECRET)
    composer = Composer(renderer, DkimSigner.from_settings(settings.dkim), clock, domain=settings.bounce_domain,
                        loop_token=loop_token_for(settings.bounce_domain.lower()), id_secret=id_secret)
    mailer = Mailer(settings, composer, clock, staff=StaffDirectory(settings), journal=append_event)
    env = Env(settings=settings, mailer=mailer, clock=clock)
    return Services(settings, engine, factory, clock, renderer, composer, mailer, env)


def build_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    resolver: TxtResolver | None = None,
    migrate: bool = True,
) -> App:
    services = build_services(settings, clock=clock, migrate=migrate)
    authenticator = build_authenticator(settings, resolver)
    processor = Processor(settings, services.factory, services.clock, authenticator, services.env)
    return App(**vars(services), authenticator=authenticator, processor=processor)
