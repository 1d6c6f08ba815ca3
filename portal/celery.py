"""The Celery application: settings come from Django's, under the CELERY_ prefix.

Housekeeping runs on Celery beat, never inside a request or a process's own thread: one
beat process per deployment sends these tasks to the default queue. Each entry expires
before its next run is due, so sweeps queued while no worker listens are dropped rather
than piling up and running back to back when one returns.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

STALE_SWEEP_SECONDS = 300.0
METRICS_PRUNE_SECONDS = 3600.0

app.conf.beat_schedule = {
    # Fail tracked runs (batch jobs, evaluations) whose worker died and whose message was lost.
    "runs-expire-stale": {
        "task": "inference.tasks.runs_expire_stale",
        "schedule": STALE_SWEEP_SECONDS,
        "options": {"expires": STALE_SWEEP_SECONDS * 0.8},
    },
    # Serving aggregates older than METRICS_RETENTION_DAYS.
    "metrics-prune": {
        "task": "monitoring.tasks.metrics_prune",
        "schedule": METRICS_PRUNE_SECONDS,
        "options": {"expires": METRICS_PRUNE_SECONDS * 0.8},
    },
}
