"""The one reader of outside JSON (control requests, the status topic): anything in, a flat object or
ValueError out; and values from outside reach the log escaped and short."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import unsafe_char
from agent.untrusted import flat_object, printable

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner), max_leaves=20)


@given(st.binary(max_size=600))
def test_any_bytes_give_a_flat_object_or_a_value_error(raw):
    try:
        value = flat_object(raw, max_bytes=512)
    except ValueError:
        return
    assert isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values())


@given(json_values)
def test_any_json_is_taken_exactly_when_it_is_a_flat_object(value):
    text = json.dumps(value)
    flat = isinstance(value, dict) and not any(isinstance(v, dict | list) for v in value.values())
    if flat:
        assert flat_object(text, max_bytes=10**6) == value
    else:
        with pytest.raises(ValueError):
            flat_object(text, max_bytes=10**6)


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"a": ' + b"{" * 5000, b'{"a": NaN}',
                                 b'{"a": 1e400}', b'{"a": -Infinity}'])
def test_deep_or_non_finite_input_is_refused_before_it_can_recurse(raw):
    with pytest.raises(ValueError):
        flat_object(raw, max_bytes=len(raw))


@given(st.text())
def test_printable_is_one_short_line(text):
    shown = printable(text, limit=64)
    assert len(shown) <= 64 and not any(unsafe_char(char) for char in shown)
