"""The audit trail on the model page says what changed, not the raw before/after documents."""

from __future__ import annotations

from registry.models import AuditEvent
from registry.templatetags.access import audit_change


def event(before, after) -> AuditEvent:
    return AuditEvent(action="x", object_type="alias", object_repr="production", before=before, after=after)


def test_a_move_reads_v1_to_v2():
    assert audit_change(event({"version": 1}, {"version": 2})) == "version: v1 → v2"


def test_added_removed_and_unchanged_fields():
    change = audit_change(event({"version": 3, "tags": ["a"]}, {"version": None, "tags": ["a"], "reason": "deleted"}))
    assert change == "version: v3 → —; reason: deleted"
    assert audit_change(event({"role": "viewer"}, None)) == "role: viewer removed"
    assert audit_change(event(None, {"tags": ["x", "y"]})) == "tags: x, y"
