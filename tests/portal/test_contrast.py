"""Text colours of the stylesheet meet WCAG AA (4.5:1 for normal text) on their backgrounds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CSS = (Path(__file__).resolve().parents[2] / "static" / "portal" / "portal.css").read_text()


def variable(name: str) -> str:
    match = re.search(rf"--{name}:\s*(#[0-9a-fA-F]{{6}})", CSS)
    assert match, name
    return match[1]


def luminance(colour: str) -> float:
    channels = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(foreground: str, background: str) -> float:
    light, dark = sorted((luminance(foreground), luminance(background)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


@pytest.mark.parametrize(
    ("foreground", "background"),
    [
        (variable("muted"), variable("bg")),  # muted text on the page
        (variable("muted"), "#ffffff"),  # muted text in cards
        (variable("ok"), "#dcf5e7"),  # the green pills (ready, production)
        (variable("text"), variable("bg")),
    ],
)
def test_text_colours_meet_wcag_aa(foreground, background):
    assert contrast(foreground, background) >= 4.5, (foreground, background, contrast(foreground, background))
