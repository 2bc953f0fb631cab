"""How a sharded build scales with Ray workers: a markdown table of build times.

    python benchmarks/ray_scaling.py                              # 50k and 200k; 1, 2, 4 workers
    python benchmarks/ray_scaling.py --sizes 2000 --workers 1,2   # a smoke test (a minute)
    python benchmarks/ray_scaling.py --no-dense                   # BM25-only builds

Catalogues of N products are made from the Home Depot titles (54,667 of them), repeated with
distinct ids and a suffix on the title ("#2") past the first copy, so that every product is
its own text. Each row builds a sharded index (one shard per worker) on a Ray started on this
machine with at most as many CPUs as the machine has (4 workers on 2 cores share them), and
reports:

- build s: wall time of ``build_sharded_index`` (partition, encode, write, publish), after
  the workers have loaded the model (worker start is its own column);
- encode s: encoding time summed over the workers;
- products/s per worker: N / encode s, one worker's encoding throughput;
- overhead s: build s - encode s / workers, i.e. what is not (perfectly parallel) encoding:
  moving texts and vectors, BM25 analysis, writing the shards, statistics, publishing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

HOME_DEPOT = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "homedepot" / "products.jsonl"
)


def make_catalogue(base: list, n: int) -> list:
    """``n`` products: the base catalogue repeated, copies with new ids and titles."""
    out = []
    for i in range(n):
        product = base[i % len(base)]
        copy = i // len(base)
        if copy:
            product = replace(
                product, id=f"{product.id}-{copy}", title=f"{product.title} #{copy + 1}"
            )
        out.append(product)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50000,200000", help="Catalogue sizes, comma-separated.")
    parser.add_argument("--workers", default="1,2,4", help="Ray worker counts, comma-separated.")
    parser.add_argument("--model", default="minilm", help="Bi-encoder (default minilm).")
    parser.add_argument("--no-dense", action="store_true", help="BM25-only builds.")
    parser.add_argument("--catalog", type=Path, default=HOME_DEPOT, help="Base catalogue.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", type=Path, help="Where indexes go (default: a temp dir).")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import shutil

    from shopsearch.benchmarks.machine import describe_machine
    from shopsearch.distributed.build import ModelEncoder, RayPool, build_sharded_index
    from shopsearch.distributed.cluster import local_cpus, ray_session
    from shopsearch.index.catalog import read_catalog

    sizes = [int(s) for s in args.sizes.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    base = read_catalog(args.catalog)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ray-scaling-"))
    make_encoder = None if args.no_dense else ModelEncoder(args.model)
    rows = []
    for workers in worker_counts:
        with ray_session("", num_cpus=local_cpus(workers)) as ray:
            started = time.perf_counter()
            with RayPool(ray, make_encoder, workers) as pool:
                ready = time.perf_counter() - started
                for n in sizes:
                    products = make_catalogue(base, n)
                    target = workdir / f"n{n}-w{workers}"
                    shutil.rmtree(target, ignore_errors=True)
                    summary = build_sharded_index(
                        products, target, pool=pool, shards=workers, batch_size=args.batch_size
                    )
                    shutil.rmtree(target, ignore_errors=True)
                    row = {
                        "products": n,
                        "workers": workers,
                        "shards": summary.shards,
                        "build_s": round(summary.seconds, 1),
                        "worker_start_s": round(ready, 1),
                        "encode_s": round(summary.encode_seconds, 1),
                        "products_per_worker_s": round(summary.products_per_worker_second, 1),
                        "overhead_s": round(summary.overhead_seconds, 1),
                    }
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr, flush=True)
    command = "python benchmarks/ray_scaling.py " + shlex.join(argv or sys.argv[1:])
    print(f"`{command.strip()}`, model {'none (BM25 only)' if args.no_dense else args.model}\n")
    print(
        "| products | Ray workers | shards | build s | worker start s | encode s (sum) "
        "| products/s per worker | overhead s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['products']:,} | {r['workers']} | {r['shards']} | {r['build_s']} "
            f"| {r['worker_start_s']} | {r['encode_s']} | {r['products_per_worker_s']} "
            f"| {r['overhead_s']} |"
        )
    print(f"\n{describe_machine()}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
