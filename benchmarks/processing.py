"""Processing alone: accepted declarations → case + acknowledgement + staff notices queued, per stage.

Issue 19: "processing does less per message". ``intake.py`` measures processing through the daemon,
behind SMTP; this measures the ``Processor`` alone, in-process, on a fresh SQLite store made the
way the daemon's is (``synchronous=FULL``, the daemon's configuration written by the tests'
``GatewayConfig``, a real DKIM key):

1. ``--open-cases`` open incident cases (with their auto-reply and staff-notice log rows) are
   written first, so that what grows with the number of open cases (duplicate detection, storm
   caps, per-sender caps, thread and directory lookups) shows in the per-message cost;
2. ``--count`` distinct declarations (``intake.declarations``: one declarant and FINESS each) are
   accepted without processing;
3. ``Processor.process_pending`` sweeps them, analysis in this process (``inline``) and then, on a
   second fresh store, in the analysis worker process as the daemon runs it (``worker``).

Per stage (wall time, inclusive; nested stages are indented): the attempt commit, the analysis
(with the pipe round trip in worker mode), the write transaction — handler, compose (DKIM signing
inside it), ORM flushes, commit + fsync. ``--profile FILE`` runs the inline sweep under cProfile
and prints the top functions by cumulative time (the raw stats are written to FILE).

Run: ``.venv/bin/python benchmarks/processing.py [--count 1000] [--open-cases 2000] [--signed] [--contacts 20000]
[--profile /tmp/p.prof]``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Connection, insert, select
from sqlalchemy.orm import Session

from benchmarks import intake
from benchmarks.intake import declarations, finess
from mailgateway.app import App, build_app
from mailgateway.clock import SystemClock
from mailgateway.dispatch.compose import Composer
from mailgateway.dispatch.dkim import DkimSigner
from mailgateway.intake.accept import accept_in
from mailgateway.processing import pipeline, runner
from mailgateway.processing.worker import AnalysisWorker
from mailgateway.settings import load_settings
from mailgateway.store.engine import transaction
from mailgateway.store.models import AutoReplyLog, Case, InboundMessage, OutboundMessage, StaffNoticeLog
from tests.support.gateway import GatewayConfig


class Stages:
    """Inclusive wall time per stage, by wrapping the functions that do each one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, stage: str) -> None:
        if isinstance(owner, dict):
            original = owner[name]
        else:
            original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - started
                self.calls[stage] += 1

        if isinstance(owner, dict):
            owner[name] = timed
            self._undo.append(lambda: owner.__setitem__(name, original))
        else:
            setattr(owner, name, timed)
            self._undo.append(lambda: setattr(owner, name, original))

    @contextmanager
    def installed(self) -> Iterator[None]:
        P = runner.Processor
        self.wrap(P, "_count_attempt", "attempt commit")
        if "_count_attempts" in P.__dict__:
            self.wrap(P, "_count_attempts", "attempt commit")
        self.wrap(P, "_analyse", "analysis (incl. IPC)")
        self.wrap(P, "_apply", "write transaction (handler + commit)")
        batch = getattr(runner, "BatchRun", None)
        if batch is not None:
            self.wrap(batch, "_commit_batch", "write transaction (handler + commit)")
        self.wrap(pipeline.HANDLERS, "declaration", "  handler (declaration)")
        self.wrap(Composer, "compose", "    compose (incl. DKIM sign)")
        self.wrap(DkimSigner, "sign", "      DKIM sign")
        self.wrap(Session, "flush", "    ORM flush (autoflush included)")
        self.wrap(Connection, "_commit_impl", "  commit + fsync")
        try:
            yield
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()

    def report(self, count: int, total: float) -> str:
        lines = [f"  {'stage':<42} {'ms/msg':>8} {'share':>6} {'calls':>7}"]
        order = ["attempt commit", "analysis (incl. IPC)", "write transaction (handler + commit)",
                 "  handler (declaration)", "    compose (incl. DKIM sign)", "      DKIM sign",
                 "    ORM flush (autoflush included)", "  commit + fsync"]
        for stage in order:
            if stage in self.seconds:
                s = self.seconds[stage]
                lines.append(f"  {stage:<42} {1000 * s / count:8.2f} {100 * s / total:5.0f}% {self.calls[stage]:7d}")
        return "\n".join(lines)


def seed_open_cases(app: App, n: int) -> None:
    """``n`` open incidents of the last days, spread over the PDL establishments the declarations
    name (duplicate detection must look at them) and others, each with its automatic reply and
    staff notice logged (the storm and per-sender caps count those)."""
    if n <= 0:
        return
    now = app.clock.now()
    with transaction(app.factory) as s:
        cases, replies, notices = [], [], []
        for k in range(n):
            opened = now - timedelta(minutes=5 + k % (3 * 24 * 60))
            cases.append({"reference": f"SSI-PDL-2025-{k + 1:06d}", "region": "PDL", "kind": "incident",
                          "status": "PRIS_EN_COMPTE", "severity": "NON_QUALIFIE", "title": f"seed {k}",
                          "finess": finess(500_000 + k), "declarant": f"seed-{k}@etab-{k % 997}.test",
                          "fields": {}, "opened_at": opened, "updated_at": opened, "event_count": 0,
                          "origin_message_id": f"<seed-{k}@etab.test>"})
            replies.append({"recipient": f"seed-{k}@etab-{k % 997}.test", "at": opened})
            notices.append({"sender": f"seed-{k}@etab-{k % 997}.test", "at": opened})
        s.execute(insert(Case), cases)
        s.execute(insert(AutoReplyLog), replies)
        s.execute(insert(StaffNoticeLog), notices)


def accept_all(app: App, count: int, signer_key: bytes | None) -> None:
    with transaction(app.factory) as s:
        for declarant, raw in declarations(count, signer_key):
            accept_in(s, raw, source="smtp", now=app.clock.now(), mail_from=declarant,
                      rcpt_tos=["ssi-pdl@ars.test"], peer="127.0.0.1")


RELAY_PORT = 9  # discard: never connected to, processing only composes and queues


def run(mode: str, count: int, open_cases: int, workdir: Path, profile: Path | None,
        signed: tuple[bytes, str] | None = None, contacts: int = 0) -> float:
    # A relay configured, as in the daemon (nothing is sent here): processing then reads what the
    # relay advertised (dispatch/relaylimits.py) to decide whether a staff mail may attach the original.
    static_keys = ({f"{intake.SELECTOR}._domainkey.etab-{d}.test": signed[1] for d in range(intake.DOMAINS)}
                   if signed is not None else {})
    config = GatewayConfig(workdir / mode, relay_port=RELAY_PORT, static_keys=static_keys)
    if contacts:
        intake.import_directory(config, workdir / mode, contacts)
    settings = load_settings(config.path)
    app = build_app(settings, clock=SystemClock())
    worker = AnalysisWorker(settings) if mode in ("worker", "single") else None
    app.processor.worker = worker
    try:
        seed_open_cases(app, open_cases)
        accept_all(app, count, signed[0] if signed is not None else None)
        if worker is not None:
            worker.prepare(settings)  # the spawn (≈1 s of imports) is not a message's cost
        stages = Stages()
        profiler = cProfile.Profile() if profile is not None else None
        results: list[runner.Result] = []
        with stages.installed():
            started = time.perf_counter()
            cpu = time.process_time()
            if profiler is not None:
                profiler.enable()
            while len(results) < count:
                if mode == "single":  # the reference: one message per transaction (process(id))
                    done = [app.processor.process(i, may_defer=True) for i in app.processor.pending(1000)]
                else:
                    done = app.processor.process_pending(1000)
                if not done:
                    break
                results += done
            if profiler is not None:
                profiler.disable()
            total = time.perf_counter() - started
            cpu = time.process_time() - cpu
        statuses: dict[str, int] = defaultdict(int)
        for r in results:
            statuses[r.status] += 1
        with app.factory() as s:
            queued = len(list(s.scalars(select(OutboundMessage.id))))
            left = len(list(s.scalars(select(InboundMessage.id).where(InboundMessage.status == "received"))))
        print(f"\n[{mode}] {count} declarations, {open_cases} open cases already present: "
              f"{count / total:.0f} msg/s ({1000 * total / count:.1f} ms/msg), results {dict(statuses)}, "
              f"{queued} outbound queued, {left} left received; CPU of this process {1000 * cpu / count:.1f} ms/msg "
              f"(less sensitive to a loaded machine than wall time; worker mode: the analysis is the worker's)")
        print(stages.report(count, total))
        if profiler is not None and profile is not None:
            profiler.dump_stats(str(profile))
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(35)
            print(out.getvalue())
        return count / total
    finally:
        if worker is not None:
            worker.close()
        app.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--open-cases", type=int, default=2000)
    parser.add_argument("--modes", default="single,worker,inline",
                        help="comma-separated: single (reference: process(id) one message per transaction, "
                             "worker), worker (process_pending, as the daemon), inline (no worker process)")
    parser.add_argument("--profile", type=Path, help="cProfile the inline sweep; stats written here")
    parser.add_argument("--signed", action="store_true",
                        help="each declaration DKIM-signed by its declarant's domain (as intake.py --signed)")
    parser.add_argument("--contacts", type=int, default=0,
                        help="establishments' contacts imported into the directory first (as intake.py --contacts)")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} (nproc {os.cpu_count()})")
    with tempfile.TemporaryDirectory(prefix="mg-bench-processing-") as tmp:
        signed = intake.signing_key(Path(tmp)) if args.signed else None
        rates = {}
        for mode in (m.strip() for m in args.modes.split(",")):
            rates[mode] = run(mode, args.count, args.open_cases, Path(tmp), args.profile if mode == "inline" else None,
                              signed, args.contacts)
        if "single" in rates and "worker" in rates:
            ratio = rates["worker"] / rates["single"]
            print(f"\nsweep (worker, as the daemon) {rates['worker']:.0f} msg/s = {ratio:.2f} x "
                  f"one message per transaction ({rates['single']:.0f} msg/s), same run")
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
