"""Scheduled jobs: deadlines, digest, weekly report, retention, housekeeping.

Each job is a plain function ``run(ctx, now) -> JobOutcome`` (``ctx``: a ``base.JobContext``)
with the instant injected, so tests run it at chosen instants and ``scheduler run-due --now``
runs it from cron. ``mailgateway.scheduler`` decides *when* a job is due and drives them with
APScheduler inside the daemon.

Exactly-once across instances: every job runs in a transaction that first takes a PostgreSQL
advisory lock named after the job (SQLite: ``BEGIN IMMEDIATE`` already serialises writers), and
every job is idempotent on its own: reminders insert their ``reminders`` row before queueing mail,
periodic mail inserts its ``job_runs`` row for the period, mail carries a stable idempotency key.
"""
