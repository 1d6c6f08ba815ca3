"""The JSON nesting measure shared by the REST API's parser and the /v2 data plane."""

from __future__ import annotations

import json

from core.jsondepth import json_depth, nested_deeper_than


def test_brackets_inside_strings_do_not_count():
    assert json_depth(b'{"a": [[1], "[[[[["]}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b'"x"') == 0 and json_depth(b"") == 0


def test_json_depth_matches_a_walk_of_the_parsed_value():
    def walked(value: object) -> int:
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        return 0 if children is None else 1 + max((walked(child) for child in children), default=0)

    values = [
        {},
        [],
        {"a": "]]]}}}"},
        [[["\\"], {"k": ['"[', {"x": [[]]}]}]],
        {"inputs": [{"name": "x", "data": [[[0.5] * 4] * 3] * 2}], "id": '\\"[[{{'},
    ]
    for value in values:
        raw = json.dumps(value).encode()
        assert json_depth(raw) == walked(value), raw


def test_nested_deeper_than_counts_only_past_the_limit():
    assert nested_deeper_than(b"[[[]]]", 2) and not nested_deeper_than(b"[[[]]]", 3)
    # Many brackets side by side are wide, not deep.
    assert not nested_deeper_than(b"[" + b"[1]," * 1000 + b"[1]]", 2)
    assert not nested_deeper_than(b'["[[[[[[[[[["]', 1)
