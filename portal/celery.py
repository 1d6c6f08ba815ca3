"""The Celery application: settings come from Django's, under the CELERY_ prefix.

Housekeeping runs on Celery beat, never inside a request or a process's own thread: one
beat process per deployment sends these tasks to the default queue. Each entry expires
before its next run is due, so sweeps queued while no worker listens are dropped rather
than piling up and running back to back when one returns.
"""

from __future__ import annotations

import os

from celery import Celery

from core.env import env_float

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Short: a run whose worker died is queued again (or failed) within a minute; the sweep is a
# couple of indexed queries when nothing is stale.
STALE_SWEEP_SECONDS = env_float("RUNS_SWEEP_SECONDS", 15.0, minimum=0.5)
METRICS_PRUNE_SECONDS = 3600.0

app.conf.beat_schedule = {
    # Tracked runs (batch jobs, evaluations) whose worker died are queued again or failed, and
    # queued runs whose message may be lost are sent again (inference.runs.lifecycle).
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
