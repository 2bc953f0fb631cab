"""benchmarks/load_test.py against a real ``search-cli serve`` on a BM25-only demo index.

Each server test starts the service as a subprocess and runs it for a few seconds."""

from __future__ import annotations

import json
import math

import pytest

from shopsearch.benchmarks import load_test


@pytest.fixture(scope="module")
def demo_index(tmp_path_factory):
    from shopsearch.demo.catalog import generate_catalog
    from shopsearch.index.store import build_index

    target = tmp_path_factory.mktemp("load") / "idx"
    build_index(generate_catalog(), target, encoder=None)
    return target


def quiet(message: str) -> None:
    pass


def test_levels_succeed_and_percentiles_are_ordered(demo_index):
    result = load_test.run_load_test(
        demo_index, levels=[1, 4], duration=1.0, warmup=5, ready_timeout=60, log=quiet
    )
    assert [r.concurrency for r in result.levels] == [1, 4]
    one = result.levels[0]
    assert one.requests > 0 and one.ok == one.requests
    assert one.errors == 0 and one.shed == 0 and not one.error_kinds
    for r in result.levels:
        assert r.qps > 0
        assert 0 < r.p50_ms <= r.p95_ms <= r.p99_ms
        assert 0 <= r.server_p50_ms <= r.p50_ms  # the pipeline alone is inside the round trip
    assert result.sustainable is not None and result.sustainable.concurrency >= 1
    table = load_test.render_table(result)
    assert "| clients |" in table and "sustainable:" in table and "machine:" in table
    json.dumps(result.to_dict(), allow_nan=False)


def test_a_full_queue_sheds_with_503_counted_as_shed_not_errors(demo_index):
    result = load_test.run_load_test(
        demo_index,
        levels=[8],
        duration=1.0,
        warmup=5,
        ready_timeout=60,
        server_args=["--concurrency", "1", "--queue", "0", "--queue-timeout", "0.01"],
        log=quiet,
    )
    (level,) = result.levels
    assert level.shed >= 1
    assert level.errors == 0 and not level.error_kinds
    assert level.ok > 0 and level.requests == level.ok + level.shed
    assert result.sustainable is None and result.shed_above == [8]
    assert "shed at 8 clients; errors at no level" in load_test.verdict(result)


def test_a_server_that_cannot_start_reports_its_output(tmp_path):
    with pytest.raises(load_test.LoadTestError, match="not a shopsearch index"):
        load_test.run_load_test(tmp_path, levels=[1], duration=1, ready_timeout=30, log=quiet)


def test_reserved_server_args_are_refused(demo_index):
    with pytest.raises(load_test.LoadTestError, match="--host"):
        load_test.run_load_test(
            demo_index, levels=[1], duration=1, server_args=["--host=0.0.0.0"], log=quiet
        )


def test_retry_after_backoff_is_capped():
    assert load_test.retry_backoff("1", 0.05) == 0.05
    assert load_test.retry_backoff("0", 0.05) == 0.0
    assert load_test.retry_backoff(None, 0.05) == 0.05
    assert load_test.retry_backoff("Wed, 21 Oct 2015 07:28:00 GMT", 0.05) == 0.05


def _level(concurrency: int, shed: int = 0, errors: int = 0, ok: int = 10):
    nan = math.nan
    return load_test.LevelResult(
        concurrency, 1.0, ok + shed + errors, ok, shed, errors, ok, 1, 2, 3, 0.5, nan
    )


def test_sustainable_is_the_highest_clean_level():
    levels = [_level(1), _level(2), _level(4, shed=3), _level(8, shed=9, errors=1)]
    assert load_test.sustainable_level(levels).concurrency == 2
    assert load_test.sustainable_level([_level(1, errors=1)]) is None
