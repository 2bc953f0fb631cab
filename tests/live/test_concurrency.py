"""Queries in threads while a writer updates and compacts: zero errors, and every answer is
one whole generation's (readers pin a generation by reading its manifest once; writers
publish a new one with one atomic rename and keep the previous generation's files)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from shopsearch.engine import SearchEngine
from shopsearch.index.store import build_index, load_index
from shopsearch.index.update import compact_index, update_index
from shopsearch.retrieval.analysis import Analyzer
from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.types import Product

QUERIES = ["marker", "king bed", "cotton dress", "锅", "microwave", "夏季连衣裙"]


@pytest.fixture(scope="module")
def analyzer():
    return Analyzer()


def state_of(index, analyzer, encoder):
    engine = SearchEngine(replace(index, analyzer=analyzer), encoder=encoder)
    answers = [
        [(h.product_id, round(h.score, 5)) for h in hits]
        for stage in ("bm25", "dense")
        for filters in (None, Filters(max_price=200.0))
        for hits in engine.stage(stage).search(QUERIES, 10, filters)
    ]
    return [p.id for p in index.products], answers


def test_readers_see_whole_generations_during_updates_and_compactions(
    tmp_path, analyzer, keyword_encoder
):
    from shopsearch.demo.catalog import generate_catalog

    pool = generate_catalog()[::24]
    live = {p.id: p for p in pool[:70]}
    index_dir = tmp_path / "idx"
    build_index(list(live.values()), index_dir, encoder=keyword_encoder, analyzer=analyzer)
    expected = {1: state_of(load_index(index_dir), analyzer, keyword_encoder)}
    pinned = load_index(index_dir)  # a reader that holds generation 1 throughout
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def fresh_state(catalogue, name):
        build_index(
            list(catalogue.values()), tmp_path / name, encoder=keyword_encoder, analyzer=analyzer
        )
        return state_of(load_index(tmp_path / name), analyzer, keyword_encoder)

    def writer():
        try:
            generation = 1
            for step in range(1, 13):
                # Each generation adds a product with its own marker word, re-prices and
                # re-titles others and deletes the marker product of two generations ago.
                marker = Product(
                    id=f"m{step:02d}", title=f"marker{step} marker oak bed", price=10.0 * step
                )
                ids = sorted(i for i in live if not i.startswith("m"))
                upserts = [marker, replace(live[ids[step]], price=1.0 + step)]
                upserts.append(replace(live[ids[-step]], title=f"cotton dress edition {step}"))
                deletes = [f"m{step - 2:02d}"] if step > 2 else []
                after = dict(live, **{p.id: p for p in upserts})
                for pid in deletes:
                    del after[pid]
                # What generation + 1 must look like, known before it is published.
                expected[generation + 1] = fresh_state(after, f"fresh{step}")
                summary = update_index(
                    index_dir, upserts, deletes, encoder=keyword_encoder, analyzer=analyzer,
                    compact=False,
                )  # fmt: skip
                assert summary.generation == generation + 1
                generation += 1
                live.clear()
                live.update(after)
                if step % 4 == 0:
                    expected[generation + 1] = expected[generation]
                    assert compact_index(index_dir).generation == generation + 1
                    generation += 1
                time.sleep(0.01)
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def reader():
        try:
            while not done.is_set():
                index = load_index(index_dir)
                state = state_of(index, analyzer, keyword_encoder)
                assert state == expected[index.generation], f"generation {index.generation}"
                seen.append(index.generation)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert len(seen) >= 10 and len(set(seen)) >= 3, seen
    # The reader pinned at generation 1 still answers with it, though its files are gone.
    assert state_of(pinned, analyzer, keyword_encoder) == expected[1]
    final = load_index(index_dir)
    assert final.generation == 16 and state_of(final, analyzer, keyword_encoder) == expected[16]
