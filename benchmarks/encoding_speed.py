"""Index-build encoding speed per runtime, against the machine's measured FLOP rate.

Encodes ``--titles`` Home Depot titles with the product tower of ``--model`` on each runtime
(``SentenceTransformerEncoder(model, runtime=...)``, exactly what ``build-index --runtime``
runs), reports products/s, the model's arithmetic per title (counted from the real token
lengths: ``2 x`` the non-embedding weights per token plus attention's ``4 L T^2 H``), the
achieved GFLOP/s, and that as a multiple of a measured fp32 matrix-multiply rate (torch's
2048x2048 sgemm at the same thread count), so "how far from the hardware" is a number, not
a guess. That reference is what torch's BLAS reaches, not the CPU's peak: ONNX Runtime's and
OpenVINO's kernels can exceed it.

    python benchmarks/encoding_speed.py                         # minilm, 2,000 titles, 2 threads
    python benchmarks/encoding_speed.py --runtimes torch,onnx --titles 200  # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from shopsearch.benchmarks.machine import describe_machine

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sgemm_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """Best-of fp32 2048x2048 matrix-multiply rate in GFLOP/s (torch's BLAS, ``threads``)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_text(config: dict, tokens: int) -> float:
    """Forward-pass FLOPs of a BERT-style encoder on one text of ``tokens`` tokens."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    inner = config.get("intermediate_size", 4 * hidden)
    weights_per_layer = 4 * hidden * hidden + 2 * hidden * inner
    return layers * (2 * weights_per_layer * tokens + 4 * tokens * tokens * hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--runtimes", default="torch,onnx,openvino,openvino-bf16")
    parser.add_argument("--titles", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--products", type=Path, default=DATA / "homedepot" / "products.jsonl")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from shopsearch.models.registry import resolve_model
    from shopsearch.retrieval.encoders import SentenceTransformerEncoder

    torch.set_num_threads(args.threads)
    with open(args.products, encoding="utf-8") as handle:
        titles = [json.loads(line)["title"] for _, line in zip(range(args.titles), handle)]
    folder = resolve_model(args.model).path
    config = json.loads((Path(str(folder)) / "config.json").read_text("utf-8"))
    peak = sgemm_gflops(args.threads)
    log(f"sgemm: {peak:.1f} GFLOP/s fp32 at {args.threads} thread(s)")

    rows, reference = [], None
    for runtime in args.runtimes.split(","):
        encoder = SentenceTransformerEncoder(args.model, runtime=runtime)
        tokenizer = encoder._model.tokenizer
        lengths = [
            len(ids)
            for ids in tokenizer(
                [encoder.document_prompt + t for t in titles],
                truncation=True,
                max_length=encoder.max_length,
            )["input_ids"]
        ]
        flops = sum(flops_per_text(config, n) for n in lengths)
        encoder.encode_documents(titles[: args.batch], batch_size=args.batch)  # warm-up
        t0 = time.perf_counter()
        vectors = encoder.encode_documents(titles, batch_size=args.batch)
        seconds = time.perf_counter() - t0
        reference = vectors if reference is None else reference
        cosine = float(np.mean(np.sum(vectors * reference, axis=1)))
        achieved = flops / seconds / 1e9
        rows.append(
            (
                runtime,
                len(titles) / seconds,
                flops / len(titles) / 1e9,
                achieved,
                achieved / peak,
                cosine,
            )
        )
        log(f"{runtime}: {len(titles) / seconds:.0f} titles/s")

    print(
        "\n| runtime | products/s | GFLOP per title | achieved GFLOP/s | x torch sgemm rate |"
        " mean cosine to first |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for runtime, rate, per_title, achieved, share, cosine in rows:
        print(
            f"| {runtime} | {rate:.0f} | {per_title:.3f} | {achieved:.1f} | {share:.2f} |"
            f" {cosine:.6f} |"
        )
    print(f"\nmachine: {describe_machine()}; sgemm {peak:.1f} GFLOP/s at {args.threads} threads")
    print(
        f"{args.model}, {len(titles)} Home Depot titles, batches of {args.batch} in file "
        f"order, {args.threads} threads, mean {np.mean(lengths):.1f} tokens per title"
    )


if __name__ == "__main__":
    main()
