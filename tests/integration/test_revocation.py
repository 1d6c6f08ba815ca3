"""A token revocation that one gateway process cannot confirm (it is frozen, yet subscribed)."""

from __future__ import annotations

import logging
import os
import re
import signal
import time

import pytest

from accounts import services as token_services
from core import invalidation
from tests.integration.conftest import FEATURES, infer_json, request_body
from tests.worker import start_gateway, until

pytestmark = [pytest.mark.integration, pytest.mark.data_plane, pytest.mark.django_db(transaction=True)]


def test_a_revocation_a_frozen_gateway_cannot_confirm_returns_after_the_timeout_and_says_so(
    gateway_url, owner, served, service_environment, shared_data_dir, processes, caplog
):
    token, secret = token_services.token_create(user=owner, name="doomed")
    body = request_body(FEATURES[:1])
    frozen, frozen_url = start_gateway(processes, service_environment, shared_data_dir / "gateway-frozen.log")
    # Both gateways have the token cached (and are subscribed to invalidations) ...
    for url in (gateway_url, frozen_url):
        assert infer_json(url, secret, "iris", body).status_code == 200
    # ... then one stops running: its subscription stays open, so it counts as a receiver.
    os.kill(frozen.pid, signal.SIGSTOP)

    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=invalidation.__name__):
        token_services.token_revoke(user=owner, token_id=token.pk)
    waited = time.monotonic() - started
    # It waited for the confirmation that never came, then gave up rather than hang.
    assert waited >= invalidation.CONFIRM_TIMEOUT_SECONDS
    assert waited < invalidation.CONFIRM_TIMEOUT_SECONDS + 30
    # Every subscribed process but the frozen one confirmed (the session's gRPC server, when it
    # runs, is a gateway process too).
    shortfall = re.search(r"only (\d+) of (\d+) gateway processes confirmed", caplog.text)
    assert shortfall is not None, caplog.text
    assert int(shortfall[1]) == int(shortfall[2]) - 1 >= 1
    # The gateway that confirmed refuses the token at once.
    assert infer_json(gateway_url, secret, "iris", body).status_code == 401

    # The frozen one, once it runs again, reads the invalidation it missed and refuses it too.
    os.kill(frozen.pid, signal.SIGCONT)
    # (Sooner than its cache's 30 s lifetime, which began before the revocation.)
    until(lambda: infer_json(frozen_url, secret, "iris", body).status_code == 401, 20, "the token refused")
