"""The registry's extension points, and services that check the actor's rights themselves."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile

from core.errors import Conflict, NotFound, PermissionDenied
from registry import hooks, services
from registry.models import AuditEvent, ModelVersion, RegisteredModel
from tests.conftest import SIGNATURE

pytestmark = pytest.mark.django_db


@pytest.fixture
def promotion_check():
    """Register a check for one test; the registry's list is left as it was."""
    added = []

    def register(check):
        hooks.promotion_check_register(check)
        added.append(check)

    yield register
    for check in added:
        hooks._promotion_checks.remove(check)


def test_a_promotion_check_can_refuse_a_move_and_sees_what_is_moved(owner, registered_model, ready_version,
                                                                   promotion_check):  # fmt: skip
    version = ready_version()
    seen = []

    def refuse(promotion: hooks.Promotion):
        seen.append((promotion.model.name, promotion.alias, promotion.version_number, promotion.force))
        raise Conflict("not today")

    promotion_check(refuse)
    with pytest.raises(Conflict, match="not today"):
        services.alias_set(actor=owner, model=registered_model, name="staging", version_number=version.version)
    assert seen == [(registered_model.name, "staging", version.version, False)]
    assert not registered_model.aliases.exists()


def test_a_forced_pass_records_inside_the_moves_transaction(owner, registered_model, ready_version, promotion_check):
    version = ready_version()
    recorded = []

    def allow_by_override(promotion: hooks.Promotion):
        return lambda locked: recorded.append((locked.pk, registered_model.aliases.filter(name="staging").exists()))

    promotion_check(allow_by_override)
    services.alias_set(actor=owner, model=registered_model, name="staging", version_number=version.version)
    # Called once, after the alias row was written and before the transaction ended.
    assert recorded == [(registered_model.pk, True)]


def test_files_named_by_other_apps_go_with_the_model(owner, registered_model, monkeypatch,
                                                     django_capture_on_commit_callbacks):  # fmt: skip
    deleted = []
    monkeypatch.setattr("registry.services.models.artifact_delete", deleted.append)
    source = lambda model: [f"elsewhere/{model.name}.bin"]  # noqa: E731
    hooks.model_files_register(source)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            services.model_delete(actor=owner, model=registered_model)
    finally:
        hooks._model_file_sources.remove(source)
    assert deleted == [f"elsewhere/{registered_model.name}.bin"]


def test_without_a_validation_requester_the_version_fails_with_the_reason(owner, registered_model, model_files,
                                                                          monkeypatch):  # fmt: skip
    monkeypatch.setattr(hooks, "_validation_requester", None)
    upload = ContentFile(model_files["torchscript"].read_bytes(), name="m.pt")
    version = services.version_upload(actor=owner, model=registered_model, file=upload, signature=SIGNATURE,
                                      enqueue=False)  # fmt: skip
    services.version_validation_enqueue(version.pk)
    version.refresh_from_db()
    assert version.status == "failed" and "could not be queued" in version.status_reason


@pytest.mark.parametrize(
    ("call", "role"),
    [
        ("model_update", "viewer"),
        ("model_delete", "maintainer"),
        ("version_upload", "predictor"),
        ("version_archive", "viewer"),
        ("version_delete", "maintainer"),
    ],
)
def test_mutating_services_check_the_actors_right_themselves(call, role, owner, member, registered_model,
                                                             ready_version, model_files):  # fmt: skip
    version = ready_version()
    description = registered_model.description
    services.role_grant(actor=owner, model=registered_model, role=role, username=member.username)
    arguments = {
        "model_update": {"model": registered_model, "description": "mine now"},
        "model_delete": {"model": registered_model},
        "version_upload": {"model": registered_model, "signature": SIGNATURE,
                           "file": ContentFile(model_files["torchscript"].read_bytes(), name="m.pt")},
        "version_archive": {"version": version},
        "version_delete": {"version": version},
    }[call]  # fmt: skip
    with pytest.raises(PermissionDenied):
        getattr(services, call)(actor=member, **arguments)
    assert AuditEvent.objects.filter(action="authz.denied", actor=member).exists()
    assert RegisteredModel.objects.filter(pk=registered_model.pk, description=description).exists()
    assert list(ModelVersion.objects.filter(model=registered_model).values_list("status", flat=True)) == ["ready"]


def test_a_model_the_actor_cannot_see_is_not_found_by_the_service(outsider, registered_model):
    with pytest.raises(NotFound):
        services.model_update(actor=outsider, model=registered_model, description="x")
