"""The JSON reader (issue 13): valid JSON that Python cannot carry on with is a 400 with a clear
message, never a RecursionError or UnicodeEncodeError further in."""

from __future__ import annotations

import pytest

from warmroute.api.json_body import parse_json_object
from warmroute.errors import InvalidRequest

REFUSED: list[tuple[str, bytes, str]] = [
    ("nested 50,000 deep", b'{"m": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
     "the body is nested too deeply"),
    ("5,000 digits", b'{"max_tokens": ' + b"7" * 5000 + b"}",
     "the body has an integer of more than 4,300 digits"),
    ("NaN", b'{"temperature": NaN}', "the body is not valid JSON: NaN is not a JSON number"),
    ("-Infinity", b'{"t": -Infinity}', "the body is not valid JSON: -Infinity is not a JSON"),
    ("overflowing float", b'{"t": 1e400}', "the body is not valid JSON: the number 1e400 is out"),
    ("lone high surrogate", b'{"c": "\\ud800"}', "the body contains a lone surrogate"),
    ("lone low surrogate in a key", b'{"\\uDC00": 1}', "the body contains a lone surrogate"),
    ("surrogate bytes", b'{"c": "\xed\xb0\x80"}', "the body contains a lone surrogate"),
    ("not an object", b"[1, 2]", "the body must be a JSON object"),
    ("not JSON", b"{nope", "the body is not valid JSON: Expecting property name"),
    ("not UTF-8", b'{"c": "\xff"}', "the body is not valid JSON"),
]


@pytest.mark.parametrize(("case", "raw", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_what_python_cannot_carry_is_refused(case: str, raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        parse_json_object(raw)
    assert refused.value.message.startswith(message)


def test_paired_surrogates_and_deep_but_sane_nesting_are_fine() -> None:
    assert parse_json_object(b'{"c": "\\ud83d\\ude80 \\u00e9"}') == {"c": "🚀 é"}
    assert parse_json_object(b'{"c": "\\\\ud800"}') == {"c": "\\ud800"}  # an escaped backslash
    deep = parse_json_object(b'{"m": ' + b"[" * 100 + b"]" * 100 + b"}")
    for _ in range(99):
        deep = {"m": deep["m"][0]}
    assert deep == {"m": []}
    assert parse_json_object(b'{"t": 1.5e3, "n": -0.0}') == {"t": 1500.0, "n": -0.0}


ACCEPTED: list[bytes] = [
    b'{"a": "x\\u0000y", "b": "\x7f", "c": "\xef\xbf\xbf"}',
    b'\t\n{"a" : 1 , "b":[ ], "a": 2}\r\n',
    b'{"seed": 123456789012345678901234567890, "big": 18446744073709551615}',
    b'{"t": 1e5, "u": -0, "v": -0.0, "w": 1.5e308, "x": 0.1}',
    b'{"pair": "\\ud83d\\ude00", "raw": "\xf0\x9f\x98\x80"}',
    b'\xef\xbb\xbf{"bom": true}',
    b'{"m": ' + b"[" * 600 + b"]" * 600 + b"}",
    b'{"f": 1e19, "g": -2.5e30, "h": -9223372036854775809, "i": 9223372036854775808}',
    b'{"m": [{"n": [' + b"1, " * 5000 + b'12345678901234567890123]}]}',
]


@pytest.mark.parametrize("raw", ACCEPTED, ids=range(len(ACCEPTED)))
def test_the_fast_parser_reads_what_the_standard_library_reads(raw: bytes) -> None:
    """orjson parses first; the answer is always the standard library's (a 20-digit integer
    stays an exact int, not orjson's float)."""
    import json

    parsed = parse_json_object(raw)
    assert parsed == json.loads(raw)
    assert [type(v) for v in parsed.values()] == [type(v) for v in json.loads(raw).values()]
