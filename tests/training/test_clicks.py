from __future__ import annotations

import json

import pytest

from shopsearch.errors import DataError
from shopsearch.training.clicks import Impression, click_labels, read_click_log, write_click_log


def _write(tmp_path, lines: list[str], name: str = "log.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [
    '{"query": "无线电钻", "product_id": "100001", "position": 1, "clicked": 1, "purchased": 1,'
    ' "session_id": "s1", "user_id": "u1", "timestamp": "2024-01-01T10:00:00Z"}',
    '{"query": "无线电钻", "product_id": 100002, "position": 2, "clicked": false}',
    "",
    '{"query": "cordless drill", "product_id": "100003", "position": 1, "clicked": true,'
    ' "purchased": null, "user_id": 7, "timestamp": 1704103200, "extra": "ignored"}',
]


def test_read_parses_fields_and_defaults(tmp_path):
    imps = read_click_log(_write(tmp_path, GOOD))
    assert imps == [
        Impression("无线电钻", "100001", 1, True, True, "s1", "u1", "2024-01-01T10:00:00Z"),
        Impression("无线电钻", "100002", 2, False),
        Impression("cordless drill", "100003", 1, True, False, None, "7", "1704103200"),
    ]


def test_round_trip_keeps_unicode(tmp_path):
    imps = read_click_log(_write(tmp_path, GOOD))
    out = tmp_path / "sub" / "copy.jsonl"
    write_click_log(imps, out)
    text = out.read_text(encoding="utf-8")
    assert "无线电钻" in text  # ensure_ascii=False
    assert read_click_log(out) == imps
    first = json.loads(text.splitlines()[0])
    assert first["clicked"] is True and first["position"] == 1
    assert "session_id" not in json.loads(text.splitlines()[1])
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD[1].encode("utf-8") + b"\n")
    assert read_click_log(path)[0].product_id == "100002"


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('{"query": "a", "product_id": "1", "position": 1', None, "malformed JSON"),
        ('["a", "1", 1, 0]', None, "expected a JSON object"),
        ('{"product_id": "1", "position": 1, "clicked": 0}', "query", "missing required field"),
        ('{"query": "a", "product_id": "1", "clicked": 0}', "position", "missing required field"),
        ('{"query": "  ", "product_id": "1", "position": 1, "clicked": 0}', "query", "empty query"),
        (
            '{"query": 3, "product_id": "1", "position": 1, "clicked": 0}',
            "query",
            "must be a string",
        ),
        (
            '{"query": "a", "product_id": "", "position": 1, "clicked": 0}',
            "product_id",
            "empty product id",
        ),
        (
            '{"query": "a", "product_id": "1", "position": 0, "clicked": 0}',
            "position",
            "positive integer",
        ),
        (
            '{"query": "a", "product_id": "1", "position": 2.5, "clicked": 0}',
            "position",
            "positive integer",
        ),
        (
            '{"query": "a", "product_id": "1", "position": "3", "clicked": 0}',
            "position",
            "positive integer",
        ),
        (
            '{"query": "a", "product_id": "1", "position": true, "clicked": 0}',
            "position",
            "positive integer",
        ),
        (
            '{"query": "a", "product_id": "1", "position": 1, "clicked": 2}',
            "clicked",
            "must be 0, 1, true or false",
        ),
        (
            '{"query": "a", "product_id": "1", "position": 1, "clicked": "yes"}',
            "clicked",
            "must be 0, 1, true or false",
        ),
        (
            '{"query": "a", "product_id": "1", "position": 1, "clicked": 0, "purchased": 1}',
            "purchased",
            "implies a click",
        ),
        (
            '{"query": "a", "product_id": "1", "position": 1, "clicked": 1, "user_id": [1]}',
            "user_id",
            "string or an integer",
        ),
    ],
)
def test_bad_line_names_file_line_and_field(tmp_path, line, field, message):
    path = _write(tmp_path, [GOOD[1], line])
    with pytest.raises(DataError, match=message) as info:
        read_click_log(path)
    err = info.value
    assert err.line == 2 and err.field == field and err.path == str(path)
    assert str(err).startswith(f"{path}:2")
    if field is not None:
        assert f"field '{field}'" in str(err)


def test_invalid_utf8_is_reported_with_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD[1].encode() + b"\n" + b'{"query": "\xff"}\n')
    with pytest.raises(DataError, match="UTF-8") as info:
        read_click_log(path)
    assert info.value.line == 2


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataError, match="no impressions"):
        read_click_log(empty)
    with pytest.raises(DataError, match="not found"):
        read_click_log(tmp_path / "nope.jsonl")


def test_click_labels_per_impression_and_aggregated():
    imps = [
        Impression("q", "b", 2, True),
        Impression("q", "a", 1, False),
        Impression("q", "b", 2, False),
        Impression("q", "b", 1, True),
        Impression("q", "b", 2, True),
    ]
    assert click_labels(imps) == [
        ("q", "b", 1.0, 2),
        ("q", "a", 0.0, 1),
        ("q", "b", 0.0, 2),
        ("q", "b", 1.0, 1),
        ("q", "b", 1.0, 2),
    ]
    assert click_labels(imps, aggregate=True) == [
        ("q", "a", 0.0, 1),
        ("q", "b", 1.0, 1),
        ("q", "b", pytest.approx(2 / 3), 2),
    ]
