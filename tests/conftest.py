"""Fixtures shared by every test: three actors, tiny real models, an isolated artifact store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from django.core.files import File
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import CommandError
from django.db import OperationalError
from django.test import TransactionTestCase
from rest_framework.test import APIClient

from core import broker
from inference import validation
from portal import demo
from portal.celery import app as celery_app
from registry import services
from registry.models import ModelVersion, RegisteredModel, VersionStatus
from tests.run_environment import run_id

SIGNATURE = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}]}


pytest_plugins = ["tests.worker"]


FLUSH_ATTEMPTS = 3


def _flush_retrying_deadlocks(teardown: Callable[[Any], None]) -> Callable[[Any], None]:
    """A transactional test's flush (TRUNCATE of every table) may deadlock with a worker or
    gateway process of the test still writing (a metrics flush, a claim): PostgreSQL then
    aborts one of the two. When it picks the flush, flush again rather than leave the next
    test the rows of this one."""

    def flush(self: Any) -> None:
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            try:
                teardown(self)
                return
            except CommandError as exc:
                if attempt == FLUSH_ATTEMPTS or not isinstance(exc.__cause__, OperationalError):
                    raise
                if "deadlock detected" not in str(exc.__cause__):
                    raise
                time.sleep(0.2 * attempt)

    return flush


TransactionTestCase._fixture_teardown = _flush_retrying_deadlocks(TransactionTestCase._fixture_teardown)  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    # Passwords of test users and sign-ins use a fast hasher: PBKDF2's deliberate cost
    # (about half a second a hash on a busy machine) bought nothing but time here, three
    # users a test. Processes the tests start (and the deploy check) keep the real hashers.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # Models loaded in the test process itself are the tests' own: no host per validation.
    # Worker processes the tests start keep the default (MODEL_SANDBOX=require) through their
    # environment, and tests/inference/test_sandbox*.py turn it on here.
    settings.MODEL_SANDBOX = "off"


@pytest.fixture(autouse=True)
def _isolated_storage(request: pytest.FixtureRequest, settings: Any, tmp_path: Path) -> None:
    """Artifacts and caches of each test live in its own temporary directory.

    Tests with a worker process share one directory with it instead (see tests/worker.py).
    """
    root = request.getfixturevalue("shared_data_dir") if _runs_real_processes(request) else tmp_path
    settings.DATA_DIR = root / "data"
    settings.DATA_DIR.mkdir(exist_ok=True)
    settings.STORAGES = {
        **settings.STORAGES,
        # Production settings expect collectstatic's manifest; tests serve from the source tree.
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        "artifacts": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(root / "artifacts")},
        },
    }


@pytest.fixture(autouse=True, scope="session")
def _metrics_flushed_by_hand() -> None:
    """No background flush of serving metrics in the test process: tests flush when they assert."""
    from monitoring import metrics

    metrics.recorder.background = False


@pytest.fixture(autouse=True, scope="session")
def _bad_tokens_not_throttled() -> None:
    """Test clients all come from 127.0.0.1 and send wrong tokens on purpose: no throttle here
    (tests/integration/test_request_hygiene.py runs a server with a small BAD_TOKEN_LIMIT)."""
    from django.conf import settings

    settings.BAD_TOKEN_LIMIT = 100_000  # as tests/worker.py gives the processes the tests start


def _runs_real_processes(request: pytest.FixtureRequest) -> bool:
    return any(request.node.get_closest_marker(name) for name in ("integration", "e2e"))


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Tasks run in this process when published (ask for it, or mark the test `celery_eager`)."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture(autouse=True)
def _celery_for_unit_tests(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests run tasks in-process only when they ask; otherwise publishing fails clearly.

    Integration and browser tests publish to the session's real broker (tests/worker.py).
    """
    if _runs_real_processes(request):
        return
    # No broker to ask either: submissions are accepted (what publishing does is up to the test).
    monkeypatch.setattr(broker, "broker_check", lambda: None)
    if request.node.get_closest_marker("celery_eager"):
        request.getfixturevalue("celery_eager")
        return

    def refuse(self: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(
            f"{request.node.nodeid} published the Celery task {name!r} to a broker; unit tests have none: "
            "mark it celery_eager (or use the celery_eager fixture), or mark it integration"
        )

    monkeypatch.setattr(type(celery_app), "send_task", refuse)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """A PostgreSQL test database named for this run: concurrent runs on one server never drop each other's.

    (pytest-django's default is test_<NAME>, created after dropping whatever had that name.)
    SQLite's test database already lives in the run's own data directory (tests/run_environment.py).
    """
    from django.conf import settings as django_settings

    for database in django_settings.DATABASES.values():
        if database["ENGINE"].endswith("sqlite3"):
            continue
        test = database.setdefault("TEST", {})
        name = test.get("NAME") or f"test_{database['NAME']}"
        test["NAME"] = f"{name}_{run_id()}"


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """pytest-django's test databases, dropped only once the processes the tests started have let go.

    PostgreSQL refuses to drop a database with sessions on it, and a worker killed a moment
    ago may still have one closing; those sessions are this run's (the database is).
    """
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all():
            if connection.vendor != "postgresql":
                continue
            others = "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            with connection.cursor() as cursor:
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    cursor.execute("SELECT pid " + others)
                    if not cursor.fetchall():
                        break
                    time.sleep(0.1)
                else:
                    cursor.execute("SELECT pg_terminate_backend(pid) " + others)


@pytest.fixture
def owner(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("olivia", password="owner-pass-123")


@pytest.fixture
def member(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("mark", password="member-pass-123")


@pytest.fixture
def outsider(django_user_model: Any) -> Any:
    return django_user_model.objects.create_user("oscar", password="outsider-pass-123")


@pytest.fixture
def api() -> Callable[[Any], APIClient]:
    """An API client authenticated as the given user (or anonymous with None)."""

    def make(user: Any = None) -> APIClient:
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real model archives, built once: TorchScript, torch.export, and look-alikes that are not models."""
    root = tmp_path_factory.mktemp("model-files")
    net = demo.iris_classifier(hidden=8, steps=5)
    files = {
        "torchscript": demo.save_torchscript(net, root / "iris.pt"),
        "exported_program": demo.save_exported_program(net, (torch.randn(2, 4),), root / "iris.pt2"),
    }
    torch.save(net.state_dict(), root / "weights.pt")
    files["state_dict"] = root / "weights.pt"
    (root / "notes.txt").write_text("this is not a model\n" * 10)
    files["text"] = root / "notes.txt"
    files["truncated"] = root / "truncated.pt"
    files["truncated"].write_bytes(files["torchscript"].read_bytes()[:1500])
    return files


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The iris MLP exported to ONNX (torch.onnx.export, dynamo): one .onnx; with external data zipped and tarred."""
    from tests.onnx_graphs import iris_onnx

    return iris_onnx(tmp_path_factory.mktemp("onnx-files"))


@pytest.fixture
def registered_model(owner: Any) -> RegisteredModel:
    return services.model_create(actor=owner, name="iris", description="test model")


def upload_file(actor: Any, model: RegisteredModel, path: Path, **fields: Any) -> ModelVersion:
    """Upload through the service, as the API and the management command do."""
    fields.setdefault("signature", SIGNATURE)
    with path.open("rb") as stream:
        return services.version_upload(
            actor=actor, model=model, file=File(stream, name=path.name), filename=path.name, **fields
        )


@pytest.fixture
def ready_version(
    owner: Any, registered_model: RegisteredModel, model_files: dict[str, Path]
) -> Callable[..., ModelVersion]:
    """Upload and validate (in-process) a version; returns it ready."""

    def make(format: str = "torchscript", **fields: Any) -> ModelVersion:
        version = upload_file(owner, registered_model, model_files[format], enqueue=False, **fields)
        assert validation.version_validate(version.pk) == VersionStatus.READY, ModelVersion.objects.get(
            pk=version.pk
        ).status_reason
        version.refresh_from_db()
        return version

    return make


def multipart(path: Path, **fields: Any) -> dict[str, Any]:
    """Form fields for an upload request; dicts and lists are sent as JSON strings."""
    data: dict[str, Any] = {
        key: json.dumps(value) if isinstance(value, (dict, list)) else value for key, value in fields.items()
    }
    data["file"] = SimpleUploadedFile(path.name, path.read_bytes())
    return data
