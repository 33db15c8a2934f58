"""A Celery app whose beat must run on one host only (two beats send every task twice).

coordinator run --group celery-beat --exec -- celery -A examples.exec.celery_beat beat
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("recipe", broker=os.environ.get("CELERY_BROKER_URL", "memory://"))
# Where beat keeps the last run of each entry (its --schedule option).
app.conf.beat_schedule_filename = os.environ.get("BEAT_SCHEDULE_FILE", "celerybeat-schedule")
app.conf.beat_schedule = {
    "report": {"task": "recipe.report", "schedule": float(os.environ.get("REPORT_EVERY", "60"))},
}


@app.task(name="recipe.report")
def report() -> None:
    """Runs on a worker; beat only sends it."""
