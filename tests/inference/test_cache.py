"""A worker's model cache: least recently used out first, within INFERENCE_CACHE_BYTES."""

from __future__ import annotations

from typing import Any

import pytest

from inference import cache
from inference.cache import ModelCache, ModelUnavailable
from registry import services
from registry.models import ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def versions(ready_version: Any) -> list[ModelVersion]:
    """Three ready versions of one small model (same weights: the same size in memory)."""
    return [ready_version() for _ in range(3)]


def _size(versions: list[ModelVersion]) -> int:
    return ModelCache(budget_bytes=1 << 30).get(versions[0].pk).size_bytes


def _resident(models: ModelCache) -> list[int]:
    return [model.version for model in models.loaded()]


def test_the_least_recently_used_model_is_evicted_when_the_budget_would_be_exceeded(versions):
    v1, v2, v3 = versions
    models = ModelCache(budget_bytes=2 * _size(versions))
    first = models.get(v1.pk)
    models.get(v2.pk)
    assert _resident(models) == [1, 2]
    # Using v1 again makes v2 the least recently used one: loading v3 evicts v2.
    assert models.get(v1.pk) is first
    models.get(v3.pk)
    assert _resident(models) == [1, 3]
    # An evicted model is loaded again on demand, and pushes out the next one in line.
    reloaded = models.get(v2.pk)
    assert reloaded.version == 2
    assert _resident(models) == [3, 2]
    assert models.get(v3.pk) is not None and _resident(models) == [2, 3]


def test_a_model_larger_than_the_budget_is_still_served_alone(versions):
    v1, v2, _ = versions
    models = ModelCache(budget_bytes=1)
    models.get(v1.pk)
    assert _resident(models) == [1]
    models.get(v2.pk)
    assert _resident(models) == [2]


def test_the_budget_comes_from_inference_cache_bytes(versions, settings, monkeypatch):
    size = _size(versions)
    settings.INFERENCE_CACHE_BYTES = 2 * size + size // 2
    monkeypatch.setattr(cache, "_cache", None)
    models = cache.model_cache()
    assert models.budget_bytes == settings.INFERENCE_CACHE_BYTES
    for version in versions:
        models.get(version.pk)
    assert _resident(models) == [2, 3]
    assert sum(model.size_bytes for model in models.loaded()) <= settings.INFERENCE_CACHE_BYTES


def test_discard_and_reset_forget_models_and_a_version_no_longer_ready_is_refused(versions, owner):
    v1, v2, _ = versions
    models = ModelCache(budget_bytes=1 << 30)
    models.get(v1.pk)
    models.get(v2.pk)
    models.discard(v1.pk)
    assert _resident(models) == [2]
    models.reset()
    assert models.loaded() == []
    services.version_archive(actor=owner, version=v1)
    with pytest.raises(ModelUnavailable, match="not ready"):
        models.get(v1.pk)
    with pytest.raises(ModelUnavailable, match="no longer exists"):
        models.get(10_000)
