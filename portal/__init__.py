"""Project package: settings, URLs, the Celery app, API tokens and demo seeding."""

from __future__ import annotations

from portal.celery import app as celery_app

__all__ = ["celery_app"]
