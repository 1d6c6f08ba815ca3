"""Guards: migrations, OpenAPI schema, deploy checks, settings helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from core import env

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_no_missing_migrations():
    out = StringIO()
    call_command("makemigrations", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()


def test_openapi_schema_is_valid_without_warnings(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    expected = ["/api/v1/models/{name}/versions/", "/api/v1/models/{name}/aliases/{alias}/rollback/", "/api/v1/tokens/"]
    for path in expected:
        assert path in text


def test_deploy_check_is_clean_under_production_settings(tmp_path):
    # Production defaults only: drop the plain-HTTP overrides the CI test run sets.
    inherited = {
        k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "SESSION_", "CSRF_", "DJANGO_ALLOW_ASYNC"))
    }
    environment = {
        **inherited,
        "DATABASE_URL": "postgres://portal@db.internal:5432/portal",
        "SECRET_KEY": "x" * 64 + "production-only-secret-for-this-check",
        "ALLOWED_HOSTS": "portal.example.com",
        "PORTAL_DATA_DIR": str(tmp_path),
        "DEBUG": "false",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_refuse_to_start_without_secret_key(tmp_path):
    environment = {k: v for k, v in os.environ.items() if k not in ("SECRET_KEY", "SECRET_KEY_FILE")}
    environment |= {"DATABASE_URL": "postgres://portal@db/portal", "PORTAL_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "SECRET_KEY (or SECRET_KEY_FILE) must be set" in result.stderr


@pytest.mark.parametrize(
    ("read", "raw", "expected"),
    [
        (lambda name: env.env_bool(name), "yes", True),
        (lambda name: env.env_bool(name, True), "OFF", False),
        (lambda name: env.env_int(name, 0), "42", 42),
        (lambda name: env.env_list(name), "a, b,,c", ["a", "b", "c"]),
        (lambda name: env.env_choice(name, "bucket", ("bucket", "max_length")), "max_length", "max_length"),
    ],
)
def test_env_helpers_parse(monkeypatch, read, raw, expected):
    monkeypatch.setenv("PORTAL_TEST_VALUE", raw)
    assert read("PORTAL_TEST_VALUE") == expected


@pytest.mark.parametrize(("helper", "raw"), [(env.env_bool, "maybe"), (env.env_int, "ten"), (env.env_float, "fast")])
def test_env_helpers_name_the_bad_variable(monkeypatch, helper, raw):
    monkeypatch.setenv("PORTAL_TEST_VALUE", raw)
    with pytest.raises(ImproperlyConfigured, match="PORTAL_TEST_VALUE"):
        helper("PORTAL_TEST_VALUE", 0)


def test_env_choice_names_the_choices(monkeypatch):
    monkeypatch.setenv("PORTAL_TEST_VALUE", "sorted")
    with pytest.raises(ImproperlyConfigured, match="PORTAL_TEST_VALUE='sorted' is not one of bucket, longest"):
        env.env_choice("PORTAL_TEST_VALUE", "bucket", ("bucket", "longest"))


def test_secret_from_file(monkeypatch, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("PORTAL_TEST_SECRET_FILE", str(secret))
    assert env.env_secret("PORTAL_TEST_SECRET") == "s3cret"
