"""The sharded build and search on a real local Ray (2 CPUs, loopback, no dashboard), and the
CLI's ``--ray`` options. Skipped when Ray is not installed."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from shopsearch.cli.main import cli
from shopsearch.distributed.engine import RayShardedSearchEngine
from shopsearch.engine import SearchEngine
from shopsearch.index.store import build_index
from shopsearch.retrieval.filters import Filters

from .test_sharded import FIXTURE_QUERIES, HashEncoder, compare

ray = pytest.importorskip("ray")


def test_cli_refuses_bad_ray_options(tmp_path, catalog_path, monkeypatch):
    # First in the module: before the module's Ray is started (an initialised Ray is reused).
    assert not ray.is_initialized()
    runner = CliRunner()
    args = ["build-index", "--catalog", str(catalog_path), "--index", str(tmp_path / "i")]
    result = runner.invoke(cli, [*args, "--no-dense", "--shards", "2"])
    assert result.exit_code == 2 and "go with --ray" in result.output
    result = runner.invoke(cli, [*args, "--no-dense", "--ray", "--shards", "0"])
    assert result.exit_code == 2 and "--shards must be at least 1" in result.output
    result = runner.invoke(cli, [*args, "--no-dense", "--ray", "127.0.0.1:1"])
    assert result.exit_code == 2 and "cannot reach the Ray cluster at 127.0.0.1:1" in result.output
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    result = runner.invoke(cli, [*args, "--no-dense", "--ray"])
    assert result.exit_code == 2 and 'pip install -e ".[ray]"' in result.output


@pytest.fixture(scope="module")
def local_ray():
    import ray.cloudpickle

    # The test encoder travels to the workers by value: its module is not importable there.
    ray.cloudpickle.register_pickle_by_value(sys.modules[HashEncoder.__module__])
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[HashEncoder.__module__])


def test_build_and_search_on_ray_equal_one_machine(tmp_path, products, local_ray, monkeypatch):
    from shopsearch.distributed.build import RayPool, build_sharded_index
    from shopsearch.index import encoder as index_encoder

    encoder = HashEncoder()
    monkeypatch.setattr(index_encoder, "load_index_encoder", lambda index, *a, **k: encoder)
    build_index(products, tmp_path / "plain", encoder=encoder)
    with RayPool(local_ray, HashEncoder, workers=2) as pool:
        summary = build_sharded_index(products, tmp_path / "sharded", pool=pool, chunk_size=4)
    assert summary.shards == 2 and summary.workers == 2 and summary.encode_seconds > 0
    plain = SearchEngine.open(tmp_path / "plain", depth=20)
    on_ray = RayShardedSearchEngine.open(tmp_path / "sharded", depth=20)
    filters = [None, Filters(category="连衣裙"), Filters(max_price=100.0)]
    assert compare(plain, on_ray, FIXTURE_QUERIES, filters) > 0
    assert (
        on_ray.search("summer dress", k=3).to_dict()["results"][0]["id"]
        == (plain.search("summer dress", k=3).to_dict()["results"][0]["id"])
    )


def test_cli_build_index_ray_then_query(tmp_path, catalog_path, local_ray):
    runner = CliRunner()
    index = tmp_path / "idx"
    args = ["build-index", "--catalog", str(catalog_path), "--index", str(index), "--no-dense"]
    result = runner.invoke(cli, [*args, "--ray", "--shards", "3", "--ray-workers", "2", "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["query", "summer dress", "--index", str(index), "--json"])
    assert result.exit_code == 0, result.output
    assert '"id": "p02"' in result.output


def test_serve_on_ray_answers_like_one_machine(tmp_path, products, local_ray, monkeypatch):
    from fastapi.testclient import TestClient

    from shopsearch.distributed.build import LocalPool, build_sharded_index
    from shopsearch.serve.app import ServeConfig, create_app

    build_index(products, tmp_path / "plain", encoder=None)
    build_sharded_index(products, tmp_path / "sharded", pool=LocalPool(None), shards=2)
    answers = []
    for index, opener in (("plain", SearchEngine.open), ("sharded", RayShardedSearchEngine.open)):
        config = ServeConfig(
            index=str(tmp_path / index),
            feedback_dir=str(tmp_path / f"{index}-feedback"),
            watch_interval_s=0,
        )
        with TestClient(create_app(config, open_engine=opener)) as client:
            response = client.get("/search", params={"q": "summer dress", "k": 5})
            assert response.status_code == 200, response.text
            answers.append([(r["id"], r["score"]) for r in response.json()["results"]])
            facets = client.get("/facets").json()
            assert facets["categories"] and facets["price"]["min"] > 0
    assert answers[0] == answers[1] and answers[0]
