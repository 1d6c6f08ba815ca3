"""Authorisation of /v2 requests inside a gateway process, without a database query.

The gateway caches the caller (user + token grant) and the route (with the caller's role
actions on the model); this module checks a request against both, counts rate-limited
tokens in Redis (requests per minute, and model tokens per minute: checked before a request,
charged after its answer), and keeps the cache honest:

- every invalidation message bumps a generation counter, and a lookup that raced with
  one is repeated, so a copy read before a revocation is never stored after it;
- a message that asks for confirmation is acknowledged once the caches are dropped
  (core.invalidation.serving_invalidate_confirmed waits for every receiver);
- while the invalidation subscription is down the caches are not trusted at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from core.errors import NotFound, PermissionDenied
from core.invalidation import ACK_MARKER
from core.throttle import TOKENS, ThrottleUnavailable, rate_hit_async, tokens_check_async
from inference.routes import Target
from registry.access import Action, grant_of, scopes_admitting

logger = logging.getLogger(__name__)
ACK_TTL_SECONDS = 30


@dataclass
class _State:
    subscribed: bool = False
    generation: int = 0


state = _State()


def cache_trusted() -> bool:
    """Whether cached users and routes may answer (only while invalidations are heard)."""
    return state.subscribed


def generation() -> int:
    """Bumped on every invalidation: a lookup that saw it change must not be cached."""
    return state.generation


def forgotten() -> None:
    state.generation += 1


def subscription(up: bool) -> None:
    """The gateway's invalidation listener reports its subscription up or down."""
    state.subscribed = up
    state.generation += 1


async def acknowledge(client: aioredis.Redis, data: bytes | str) -> None:
    """Confirm an invalidation that asks for it (call after the caches are dropped)."""
    text = data.decode() if isinstance(data, bytes) else data
    _, marker, key = text.partition(ACK_MARKER)
    if not marker:
        return
    async with client.pipeline(transaction=False) as pipe:
        pipe.rpush(key, b"1")
        pipe.expire(key, ACK_TTL_SECONDS)
        await pipe.execute()


def authorize(user: Any, target: Target, action: Action) -> None:
    """Check a resolved route against the caller's role and token (no I/O)."""
    token_covers(user, target.model_id, target.model_name)
    if action not in target.actions:
        raise PermissionDenied(
            f"You may see model {target.model_name!r} but not call its predictions; ask its owner for a role."
        )
    token_scoped(user, action)


def token_covers(user: Any, model_id: int, model_name: str) -> None:
    """A token restricted to other models does not see this one (404, like a missing model)."""
    grant = grant_of(user)
    if grant is not None and not grant.covers(model_id):
        raise NotFound(f"Model {model_name!r} not found.")


def token_scoped(user: Any, action: Action) -> None:
    """The caller's token, if any, carries a scope for the action: predict for infer, read or predict otherwise."""
    grant = grant_of(user)
    if grant is not None:
        needed = scopes_admitting(action)
        if not needed & grant.scopes:
            raise PermissionDenied(f"Your API token lacks the {' or '.join(sorted(needed))!r} scope for this call.")


async def rate_limit(client: aioredis.Redis, user: Any) -> None:
    """One Redis call for a token with a rate limit; nothing at all for one without."""
    grant = grant_of(user)
    if grant is not None and grant.rate_limit_per_minute:
        await rate_hit_async(client, f"token {grant.token_id}", grant.rate_limit_per_minute)


async def tokens_check(client: aioredis.Redis, user: Any) -> None:
    """Refuse (429) a request of a token whose model tokens this minute reached its limit; free without one."""
    grant = grant_of(user)
    if grant is not None and grant.tokens_per_minute:
        await tokens_check_async(client, f"token {grant.token_id}", grant.tokens_per_minute)


async def tokens_charge(client: aioredis.Redis, user: Any, tokens: int) -> None:
    """Charge an answered request's model tokens to its token's window (nothing without a limit).

    The answer is already computed: a Redis that fails now is logged, and the answer still goes out.
    """
    grant = grant_of(user)
    if grant is not None and grant.tokens_per_minute and tokens > 0:
        try:
            await TOKENS.charge_async(client, f"token {grant.token_id}", tokens)
        except ThrottleUnavailable as exc:
            logger.warning("could not charge %d tokens to token %s: %s", tokens, grant.token_id, exc.message)
