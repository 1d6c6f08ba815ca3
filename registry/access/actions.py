"""What can be done to a model, and which role allows what."""

from __future__ import annotations

from enum import StrEnum

from registry.roles import Role


class Action(StrEnum):
    VIEW = "view"  # see the model, versions, aliases, audit trail; v2 metadata and ready
    PREDICT = "predict"  # call predictions (/v2 infer, /predict, batch jobs)
    DOWNLOAD = "download"  # fetch an artifact
    UPLOAD = "upload"  # upload, edit, archive, restore, revalidate versions
    EVALUATE = "evaluate"  # start evaluations
    MOVE_ALIAS = "move_alias"  # set, move, roll back or delete an unprotected alias
    PROMOTE = "promote"  # the same for a protected alias; request and approve such moves
    OVERRIDE_GATE = "override_gate"  # promote past a failed evaluation gate
    DELETE = "delete"  # delete versions or the model
    MANAGE = "manage"  # roles, visibility, description, protected aliases


VIEWER = frozenset({Action.VIEW})
PREDICTOR = VIEWER | {Action.PREDICT}
MAINTAINER = PREDICTOR | {Action.DOWNLOAD, Action.UPLOAD, Action.EVALUATE, Action.MOVE_ALIAS}
OWNER = frozenset(Action)
ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    Role.VIEWER: VIEWER,
    Role.PREDICTOR: PREDICTOR,
    Role.MAINTAINER: MAINTAINER,
    Role.OWNER: OWNER,
}
WRITE_ACTIONS = frozenset(OWNER - {Action.VIEW, Action.DOWNLOAD, Action.PREDICT})
