"""The request rules every plane shares (core.hygiene), and the model address check (registry.selectors)."""

from __future__ import annotations

import pytest

from core import hygiene
from core.errors import InvalidInput, MethodNotAllowed, NotAcceptable, UnsupportedMediaType
from registry.selectors import address_checked

OFFERED = ("application/json", "application/octet-stream")


@pytest.mark.parametrize(
    "accept",
    ["*/*", "application/json", "application/*", "text/html, */*;q=0.1", "application/octet-stream",
     "APPLICATION/JSON; charset=utf-8", "", "text/html,application/json;q=0.9"],
)  # fmt: skip
def test_accept_headers_admitting_an_offered_type_pass(accept):
    hygiene.accept_checked({b"accept": accept.encode()}, OFFERED)


@pytest.mark.parametrize(
    "accept", ["text/html", "text/*", "application/xml", "application/json;q=0, application/octet-stream;q=0",
               "*/*;q=0", "application/*;q=0, */*"],
)  # fmt: skip
def test_accept_headers_admitting_nothing_offered_are_406(accept):
    with pytest.raises(NotAcceptable, match="application/json or application/octet-stream"):
        hygiene.accept_checked({b"accept": accept.encode()}, OFFERED)


def test_no_accept_header_accepts_anything():
    hygiene.accept_checked({}, OFFERED)


def test_content_type_is_checked_without_its_parameters_and_may_be_absent():
    hygiene.content_type_checked({}, OFFERED)
    hygiene.content_type_checked({b"content-type": b"Application/JSON; charset=utf-8"}, OFFERED)
    with pytest.raises(UnsupportedMediaType, match=r"'application/x-www-form-urlencoded'.*application/json") as caught:
        hygiene.content_type_checked({b"content-type": b"application/x-www-form-urlencoded"}, OFFERED)
    assert caught.value.status_code == 415


def test_method_not_allowed_names_the_allowed_ones_in_allow():
    hygiene.method_checked("GET", ("GET",), "/v2")
    with pytest.raises(MethodNotAllowed) as caught:
        hygiene.method_checked("DELETE", ("POST",), "/v2/models/m/infer")
    assert caught.value.status_code == 405 and caught.value.headers == {"Allow": "POST"}


def test_hosts_follow_allowed_hosts_like_django(settings):
    settings.ALLOWED_HOSTS = ["portal.example", ".internal"]
    for host in (b"portal.example", b"portal.example:8443", b"a.internal", b"PORTAL.example"):
        hygiene.host_checked({b"host": host}, None)
    for host in (b"evil.example", b"portal.example.evil", b"portal.example\x00", b"", b"[::1"):
        with pytest.raises(InvalidInput, match="ALLOWED_HOSTS"):
            hygiene.host_checked({b"host": host}, None)
    # Without a Host header the server's own address answers for it, as in Django.
    with pytest.raises(InvalidInput):
        hygiene.host_checked({}, ("127.0.0.1", 8000))
    settings.ALLOWED_HOSTS = ["127.0.0.1"]
    hygiene.host_checked({}, ("127.0.0.1", 8000))
    hygiene.host_checked({}, None)  # an app called in-process, with no server in between


def test_control_characters_in_a_path_are_refused_whatever_they_are():
    hygiene.path_checked("/v2/models/iris-2.0_b/versions/3/infer")
    for character in ("\x00", "\n", "\r", "\x1b", "\x7f", "\x85"):
        with pytest.raises(InvalidInput, match=f"U\\+{ord(character):04X}"):
            hygiene.path_checked(f"/v2/models/ir{character}is")


@pytest.mark.parametrize(
    ("name", "version"), [("iris", None), ("Iris-2.0_b", "3"), ("iris", "production"), ("a" * 64, "staging-2")]
)
def test_well_formed_model_addresses_pass(name, version):
    address_checked(name, version)


@pytest.mark.parametrize(
    ("name", "version"),
    [("ir\x00is", None), ("iris\n", None), ("a" * 65, None), ("-iris", None), ("ir is", None), ("iris", "²"),
     ("iris", "1234567890"), ("iris", "Production"), ("iris", "prod\x00"), ("iris", ""), ("ïris", None)],
)  # fmt: skip
def test_malformed_model_addresses_are_400_naming_the_rule(name, version):
    with pytest.raises(InvalidInput, match=r"model name|version number"):
        address_checked(name, version)
