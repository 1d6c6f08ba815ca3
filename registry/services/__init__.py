"""Registry operations, one module per entity: models, versions, aliases, access, promotion requests.

Every change happens in one transaction and writes an AuditEvent beside it (registry.audit).
Work that must not run inside a transaction (storage I/O, enqueueing) happens before it or
in on_commit, so a failure never leaves a row without its file or a file without its row.
Every mutating service checks the actor's right itself (registry.access), so a new
interface cannot forget to.
"""

from __future__ import annotations

from registry.services.access import (
    alias_move_authorize,
    alias_protect,
    alias_protection,
    role_grant,
    role_revoke,
    roles_of,
)
from registry.services.aliases import alias_delete, alias_previous_version, alias_rollback, alias_set
from registry.services.models import MAX_TAGS, alias_name_check, model_create, model_delete, model_update, tags_parse
from registry.services.promotions import promotion_request_create, promotion_request_decide
from registry.services.versions import (
    version_archive,
    version_artifact_path,
    version_delete,
    version_download,
    version_model_directory,
    version_restore,
    version_revalidate,
    version_update,
    version_upload,
    version_validation_enqueue,
)

__all__ = [
    "MAX_TAGS",
    "alias_delete",
    "alias_move_authorize",
    "alias_name_check",
    "alias_previous_version",
    "alias_protect",
    "alias_protection",
    "alias_rollback",
    "alias_set",
    "model_create",
    "model_delete",
    "model_update",
    "promotion_request_create",
    "promotion_request_decide",
    "role_grant",
    "role_revoke",
    "roles_of",
    "tags_parse",
    "version_archive",
    "version_artifact_path",
    "version_delete",
    "version_download",
    "version_model_directory",
    "version_restore",
    "version_revalidate",
    "version_update",
    "version_upload",
    "version_validation_enqueue",
]
