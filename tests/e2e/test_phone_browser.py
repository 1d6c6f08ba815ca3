"""Pages at a phone's width (390 px): the navigation wraps and stays readable, nothing pushes
the page sideways (wide tables scroll inside their card); and at a tablet's and a small
laptop's width, where the tables are full size, nothing sticks out of its card either."""

from __future__ import annotations

from typing import Any

import pytest

from registry import services as registry_services
from tests.e2e.conftest import login

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

PHONE = {"width": 390, "height": 844}
PAGES = ("/", "/models/iris/", "/models/iris/versions/1/", "/models/iris/upload/", "/jobs/", "/tokens/",
         "/monitoring/", "/models/iris/compare/")  # fmt: skip


@pytest.fixture
def phone(chromium: Any, live_server: Any) -> Any:
    context = chromium.new_context(base_url=live_server.url, viewport=PHONE, device_scale_factor=2, is_mobile=True)
    context.set_default_timeout(20_000)
    yield context.new_page()
    context.close()


def overflow(page: Any) -> dict[str, Any]:
    """How far the page is wider than the screen, and the widest elements that stick out."""
    return page.evaluate(
        """() => {
            const width = document.documentElement.clientWidth;
            const out = [...document.querySelectorAll("body *")]
                .filter((el) => el.getBoundingClientRect().right > width + 1 && !el.closest(".table, pre"))
                .slice(0, 5).map((el) => el.tagName + (el.id ? "#" + el.id : "") + "." + el.className);
            return {extra: document.documentElement.scrollWidth - width, out};
        }"""
    )


def test_every_page_fits_a_phone(phone, owner, ready_version):
    ready_version(labels=["setosa", "versicolor", "virginica"])
    login(phone, "olivia", "owner-pass-123")
    for path in PAGES:
        response = phone.goto(path)
        assert response is not None and response.status == 200, path
        phone.wait_for_load_state("networkidle")
        found = overflow(phone)
        assert found["extra"] <= 0, f"{path} is {found['extra']} px wider than the screen: {found['out']}"
    # The navigation wraps onto its own line: every link is on screen, none hidden off the edge.
    boxes = phone.locator(".topbar nav a").evaluate_all("(links) => links.map((a) => a.getBoundingClientRect().right)")
    assert boxes and max(boxes) <= PHONE["width"]


def test_no_page_is_wider_than_a_tablet_or_laptop(phone, owner, registered_model, ready_version):
    # Two versions with production on v1: the versions table has its widest row ("Promote to production").
    ready_version(labels=["setosa", "versicolor", "virginica"])
    ready_version(labels=["setosa", "versicolor", "virginica"])
    registry_services.alias_set(actor=owner, model=registered_model, name="production", version_number=1)
    login(phone, "olivia", "owner-pass-123")
    for width in (800, 1024, 1280):
        phone.set_viewport_size({"width": width, "height": 900})
        for path in PAGES:
            phone.goto(path)
            phone.wait_for_load_state("networkidle")
            found = overflow(phone)
            assert found["extra"] <= 0, f"{path} at {width} px: {found['extra']} px too wide {found['out']}"
            cards = phone.evaluate(
                """() => [...document.querySelectorAll(".card")].filter((c) => c.scrollWidth > c.clientWidth + 1)
                    .map((c) => (c.querySelector("h2") || c).textContent.trim().slice(0, 40))"""
            )
            assert cards == [], f"{path} at {width} px: content sticks out of the cards {cards}"
