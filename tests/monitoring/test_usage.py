"""Token usage metering: the aggregator, its flush into UsageBucket rows, Prometheus, and who sees what."""

from __future__ import annotations

import csv
import io
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from django.db import DatabaseError, OperationalError, connection

from accounts import services as token_services
from inference import telemetry
from inference.runs.loop import ModelWork
from inference.tasks import JobWork
from monitoring import metrics, services
from monitoring.metrics import UsageMeter
from monitoring.models import UsageBucket
from tests.worker import METRICS_AUTH

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(ready_version: Any) -> Any:
    made = ready_version()
    metrics.recorder.reset()
    yield made
    metrics.recorder.reset()


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("sam", password="staff-pass-123", is_staff=True)


def use(version: Any, user: Any, token: Any = None, prompt: int = 10, completion: int = 0, n: int = 1) -> None:
    for _ in range(n):
        metrics.recorder.usage(version_id=version.pk, model=version.model.name, version=version.version,
                               user_id=user.pk if user else None, token_id=token.pk if token else None,
                               prompt_tokens=prompt, completion_tokens=completion)  # fmt: skip


def test_the_meter_sums_per_version_minute_and_caller_and_takes_what_it_gathered():
    meter = UsageMeter()
    meter.apply([(1, "m", 1, 7, 3, 10, 0, 100), (1, "m", 1, 7, 3, 5, 2, 100), (1, "m", 1, 7, None, 4, 0, 100),
                 (1, "m", 1, 7, 3, 1, 0, 101)])  # fmt: skip
    cells = meter.take()
    assert cells == {(1, 100, 7, 3): [2, 15, 2], (1, 100, 7, None): [1, 4, 0], (1, 101, 7, 3): [1, 1, 0]}
    assert meter.take() == {}
    meter.restore(cells)
    meter.apply([(1, "m", 1, 7, 3, 1, 1, 100)])
    assert meter.take()[(1, 100, 7, 3)] == [3, 16, 3]


def test_usage_is_flushed_into_this_process_rows_and_merged_on_the_next_flush(version, owner):
    token, _ = token_services.token_create(user=owner, name="ci")
    use(version, owner, token, prompt=12, n=3)
    use(version, owner, None, prompt=5)
    assert metrics.recorder.flush() == 2
    use(version, owner, token, prompt=8, completion=4)
    metrics.recorder.flush()
    rows = {row.token_id: row for row in UsageBucket.objects.all()}
    assert len(rows) == 2
    assert (rows[token.pk].requests, rows[token.pk].prompt_tokens, rows[token.pk].completion_tokens) == (4, 44, 4)
    assert (rows[None].requests, rows[None].prompt_tokens, rows[None].user_id) == (1, 5, owner.pk)


def test_usage_of_a_deleted_token_is_kept_without_its_name(version, owner):
    token, _ = token_services.token_create(user=owner, name="gone")
    use(version, owner, token, prompt=9)
    token.delete()
    metrics.recorder.flush()
    row = UsageBucket.objects.get()
    assert (row.token_id, row.user_id, row.prompt_tokens) == (None, owner.pk, 9)


def test_a_sample_meters_its_tokens_for_its_caller_only_when_answered(version, owner):
    token, secret = token_services.token_create(user=owner, name="t")
    caller = token_services.token_authenticate(secret).user  # the user as a token presents it
    answered = telemetry.Sample(version.pk, version.model.name, version.version, None, source="v1")
    answered.caller(caller)
    answered.prompt_tokens = 17
    answered.done(200)
    failed = telemetry.Sample(version.pk, version.model.name, version.version, None, source="v1")
    failed.caller(caller)
    failed.prompt_tokens = 99
    failed.done(500)
    untokenised = telemetry.Sample(version.pk, version.model.name, version.version, None)  # a tensor model
    untokenised.done(200)
    metrics.recorder.flush()
    row = UsageBucket.objects.get()
    assert (row.user_id, row.token_id, row.requests, row.prompt_tokens) == (owner.pk, token.pk, 1, 17)


def test_prometheus_counts_prompt_and_completion_tokens_per_model_and_version(client, version, owner):
    def value(name: str) -> float:
        text = client.get("/metrics", headers=METRICS_AUTH).content.decode()
        key = f'{name}{{model="iris",version="{version.version}"}}'
        lines = [line for line in text.splitlines() if line.startswith(key)]
        return float(lines[0].split()[-1]) if lines else 0.0

    prompt, completion = value("maas_prompt_tokens_total"), value("maas_completion_tokens_total")
    use(version, owner, prompt=30, completion=12, n=2)
    assert value("maas_prompt_tokens_total") == prompt + 60
    assert value("maas_completion_tokens_total") == completion + 24


def test_users_see_their_own_usage_and_staff_see_everyone(api, version, owner, member, staff):
    mine, _ = token_services.token_create(user=owner, name="mine")
    theirs, _ = token_services.token_create(user=member, name="theirs")
    use(version, owner, mine, prompt=10, n=2)
    use(version, owner, None, prompt=3)
    use(version, member, theirs, prompt=7, completion=1)
    metrics.recorder.flush()

    answer = api(owner).get("/api/v1/usage/", {"window": "day"})
    assert answer.status_code == 200, answer.content
    body = answer.json()
    assert body["totals"] == {"requests": 3, "prompt_tokens": 23, "completion_tokens": 0, "total_tokens": 23}
    assert body["by_version"] == [{"model": "iris", "version": version.version, "requests": 3, "prompt_tokens": 23,
                                   "completion_tokens": 0, "total_tokens": 23}]  # fmt: skip
    callers = {row["token_id"]: row for row in body["by_caller"]}
    assert set(callers) == {mine.pk, None}
    assert callers[mine.pk]["token"].startswith("mine (mp_") and callers[mine.pk]["prompt_tokens"] == 20

    assert api(member).get("/api/v1/usage/").json()["totals"]["total_tokens"] == 8
    assert api(member).get("/api/v1/usage/", {"token": mine.pk}).json()["totals"]["requests"] == 0
    everyone = api(staff).get("/api/v1/usage/", {"window": "week"}).json()
    assert everyone["totals"]["total_tokens"] == 31
    assert {row["user"] for row in everyone["by_caller"]} == {"olivia", "mark"}
    narrowed = api(staff).get("/api/v1/usage/", {"token": theirs.pk, "model": "iris"}).json()
    assert narrowed["totals"] == {"requests": 1, "prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8}
    assert api(staff).get("/api/v1/usage/", {"model": "other"}).json()["totals"]["requests"] == 0


def test_the_usage_api_names_a_bad_filter_and_needs_a_sign_in(api, owner):
    assert api(owner).get("/api/v1/usage/", {"window": "year"}).status_code == 400
    bad = api(owner).get("/api/v1/usage/", {"token": "abc"})
    assert bad.status_code == 400 and "token must be an API token's id" in bad.json()["error"]
    assert api(None).get("/api/v1/usage/").status_code in (401, 403)


def test_a_read_scoped_token_reads_its_owner_usage(client, version, owner):
    token, secret = token_services.token_create(user=owner, name="reader", scopes=["read"])
    use(version, owner, token, prompt=4)
    metrics.recorder.flush()
    answer = client.get("/api/v1/usage/", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert answer.status_code == 200 and answer.json()["totals"]["prompt_tokens"] == 4


def test_the_csv_export_has_a_line_per_minute_version_and_caller(api, version, owner, member, staff):
    token, _ = token_services.token_create(user=owner, name="=cmd")
    use(version, owner, token, prompt=6, completion=2, n=2)
    use(version, member, None, prompt=1)
    metrics.recorder.flush()
    answer = api(staff).get("/api/v1/usage/csv/", {"window": "hour"})
    assert answer.status_code == 200 and answer["Content-Type"].startswith("text/csv")
    lines = list(csv.DictReader(io.StringIO(answer.content.decode())))
    assert len(lines) == 2
    by_user = {line["user"]: line for line in lines}
    assert by_user["olivia"]["token"].startswith("'=cmd (mp_")  # never a spreadsheet formula
    assert (by_user["olivia"]["requests"], by_user["olivia"]["total_tokens"]) == ("2", "16")
    assert by_user["mark"]["token_id"] == "" and by_user["mark"]["prompt_tokens"] == "1"
    own = api(member).get("/api/v1/usage/csv/").content.decode()
    assert "olivia" not in own and "mark" in own


def test_the_usage_page_shows_the_callers_tables(client, version, owner, member, staff):
    token, _ = token_services.token_create(user=owner, name="pipeline")
    use(version, owner, token, prompt=11)
    use(version, member, None, prompt=2)
    metrics.recorder.flush()
    client.force_login(owner)
    page = client.get("/usage/?window=day").content.decode()
    assert "pipeline (mp_" in page and "<strong>11</strong> tokens" in page and "mark" not in page
    client.force_login(staff)
    page = client.get("/usage/").content.decode()
    assert "<strong>13</strong> tokens" in page and "browser session" in page and "mark" in page


def test_usage_is_pruned_after_its_retention(version, owner, settings):
    use(version, owner, prompt=3)
    metrics.recorder.flush()
    UsageBucket.objects.update(minute="2000-01-01T00:00:00Z")
    settings.USAGE_RETENTION_DAYS = 30
    assert metrics.usage_prune() == 1
    assert services.usage_summary(owner, "week")["totals"]["requests"] == 0


def test_usage_the_database_refuses_is_kept_for_the_next_flush(version, owner):
    table = UsageBucket._meta.db_table

    def refuse(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        if table in sql:
            raise OperationalError("server closed the connection unexpectedly")
        return execute(sql, params, many, context)

    use(version, owner, prompt=6, n=2)
    with connection.execute_wrapper(refuse), pytest.raises(DatabaseError):
        metrics.recorder.flush()
    use(version, owner, prompt=1)
    metrics.recorder.flush()
    row = UsageBucket.objects.get()
    assert (row.requests, row.prompt_tokens) == (3, 13)


def test_the_model_page_charts_tokens_per_minute_per_version(client, version, owner, member):
    use(version, owner, prompt=30, completion=6, n=2)
    use(version, member, prompt=4)
    metrics.recorder.flush()
    series = services.usage_series("hour", version.model.versions.all())
    ((line,),) = [series["series"]]
    assert line["name"] == f"iris v{version.version}" and len(line["prompt"]) == len(series["times"]) == 61
    assert sum(line["prompt"]) == 64 and sum(line["completion"]) == 12  # per minute: hour steps are minutes
    day = services.usage_series("day", version.model.versions.all())["series"][0]
    assert sum(day["prompt"]) == pytest.approx(64 / 15)  # a 15-minute step: its tokens per minute
    client.force_login(owner)
    figure = client.get("/models/iris/charts/?window=hour").json()["figures"]["tokens"]
    assert [trace["name"] for trace in figure["data"]] == [f"iris v{version.version} prompt",
                                                           f"iris v{version.version} completion"]  # fmt: skip


def test_the_usage_api_and_page_cost_the_same_few_queries_however_many_callers(
    api, client, version, staff, django_user_model, django_assert_max_num_queries
):
    for i in range(12):
        user = django_user_model.objects.create_user(f"user{i}")
        token, _ = token_services.token_create(user=user, name=f"t{i}")
        use(version, user, token, prompt=i + 1)
    metrics.recorder.flush()
    with django_assert_max_num_queries(6):
        assert len(api(staff).get("/api/v1/usage/").json()["by_caller"]) == 12
    client.force_login(staff)
    with django_assert_max_num_queries(8):
        assert client.get("/usage/").status_code == 200


def test_a_text_job_chunk_meters_the_tokens_it_read_for_the_job_owner(monkeypatch):
    metrics.recorder.reset()
    monkeypatch.setattr(ModelWork, "chunk", lambda self, start, stop: {"tokens": np.array([3, 4])})
    work = JobWork.__new__(JobWork)  # no claim: only the chunk hooks are exercised
    work.run = SimpleNamespace(version_id=9, model_name="m", version_number=1, created_by_id=4)  # type: ignore[assignment]
    work.chunk(0, 2)
    work.chunk_done(2, time.perf_counter(), ok=True)
    work.chunk_done(2, time.perf_counter(), ok=False)  # a failed chunk meters nothing
    ((key, cell),) = metrics.recorder.usage_meter.take().items()
    assert (key[0], key[2], key[3], cell) == (9, 4, None, [1, 7, 0])
    metrics.recorder.reset()
