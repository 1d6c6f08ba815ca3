"""Demo data for monitoring: a labelled dataset and one evaluation, and some live traffic.

`seed_demo` calls `demo_evaluation_seed`; `runportal` calls `demo_traffic` once the web
server is up, so a new user sees charts with data at once.
"""

from __future__ import annotations

import io
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

import numpy as np
from django.core.files import File

from accounts import services as token_services
from monitoring import services
from monitoring.models import EvaluationRun
from portal import demo, demo_text
from registry.models import RegisteredModel

logger = logging.getLogger(__name__)

DEMO_MODEL = "iris-classifier"
DATASET = "iris-holdout"


def demo_evaluation_seed(user: Any) -> EvaluationRun | None:
    """A held-out iris dataset and one evaluation of production on it (idempotent)."""
    model = RegisteredModel.objects.filter(name=DEMO_MODEL).first()
    if model is None or model.eval_datasets.filter(name=DATASET).exists():
        return None
    features, labels = demo._iris_like_data(samples_per_class=100, seed=7)
    buffer = io.BytesIO()
    np.savez(buffer, features=features.numpy().astype(np.float32), labels=labels.numpy())
    buffer.seek(0)
    dataset = services.dataset_create(
        actor=user,
        model=model,
        name=DATASET,
        file=File(buffer, name="holdout.npz"),
        filename="holdout.npz",
        description="300 held-out iris-like flowers.",
    )
    production = model.aliases.select_related("version").get(name="production").version
    # Queued now; the worker that starts next runs it.
    return services.evaluation_start(actor=user, version=production, dataset=dataset)


BODIES = {
    "iris-classifier": ("features", [1, 4], "FP32", lambda rng: rng.normal([5.8, 3.0, 3.7, 1.2], 0.5).tolist()),
    "house-price": ("features", [1, 3], "FP32", lambda rng: rng.uniform([1, 0, 0], [6, 80, 30]).tolist()),
    "sentiment": ("tokens", [1, 12], "INT64", lambda rng: rng.integers(0, 1000, 12).tolist()),
    # Text models take BYTES: one UTF-8 string per row, sent as JSON strings.
    "bert-sentiment": ("text", [1], "BYTES", lambda rng: [str(rng.choice(demo_text.sentiment_examples()[0]))]),
    "bert-fill-mask": ("text", [1], "BYTES", lambda rng: [demo_text.FILL_MASK_EXAMPLE]),
}


# A busy machine (a model loading, a first request warming up) may miss a timeout or two.
SEND_ATTEMPTS = 4


def traffic_send(request: urllib.request.Request, base_url: str) -> bool:
    """Send one prediction, retrying timeouts with backoff; False once the server stays silent."""
    for attempt in range(SEND_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - our own URL
                return True
        except urllib.error.HTTPError:
            return True  # an answer, if not a 200 (the bad requests are meant)
        except OSError:
            time.sleep(2**attempt)
    logger.warning("demo traffic stopped: %s did not answer %s times", base_url, SEND_ATTEMPTS)
    return False


def demo_traffic(base_url: str, user: Any, requests_per_model: int = 40, ready_timeout: float = 90.0) -> int:
    """Send some predictions (and a few bad ones) through /v2 with a short-lived token; returns how many."""
    # A name of its own per run: a restart on an existing data directory finds the last one's.
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    token, secret = token_services.token_create(user=user, name=f"demo traffic {started} (revoked after use)")
    headers = {"Authorization": f"Bearer {secret}", "Content-Type": "application/json"}
    sent = 0
    try:
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base_url}v2/health/ready", timeout=2):  # noqa: S310 - our own URL
                    break
            except OSError:
                time.sleep(1)
        rng = np.random.default_rng(0)
        for round_ in range(requests_per_model):
            for name, (tensor, shape, datatype, make) in BODIES.items():
                data = make(rng)
                if round_ % 13 == 12:
                    shape = [1, len(data) + 1]  # a wrong shape now and then: the error rate is not always 0
                body = {"inputs": [{"name": tensor, "shape": shape, "datatype": datatype, "data": data}]}
                url = f"{base_url}v2/models/{name}/infer"
                request = urllib.request.Request(url, json.dumps(body).encode(), headers)  # noqa: S310 - our own URL
                if not traffic_send(request, base_url):
                    return sent
                sent += 1
            time.sleep(0.05)
    finally:
        token_services.token_revoke(user=user, token_id=token.pk)
    logger.info("sent %s demo predictions", sent)
    return sent
