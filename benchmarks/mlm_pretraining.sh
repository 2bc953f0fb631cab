#!/usr/bin/env bash
# Does domain-adaptive masked-LM pre-training help the reranker? Same recipe, same budget,
# two starting points: minilm, and minilm after one MLM epoch on Home Depot titles.
#   bash benchmarks/mlm_pretraining.sh INDEX [WORKDIR]     (~20 minutes on 2 CPU cores)
# INDEX: a Home Depot index (e.g. from benchmarks/homedepot.sh); it is only read.
# Knobs: TITLES (titles pre-trained on, default 20000), QUERIES (train queries for each
# reranker, default 1500), DEV (dev queries evaluated, default 400).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
index="$1"
work="${2:-mlm-work}"
data="${DATA:-$here/../../shared/data/homedepot}"
mkdir -p "$work"
export HF_HUB_OFFLINE=1
run() { echo "+ $*" >&2; /usr/bin/time -f "  (%e s, %M KB peak)" "$@"; }

head -n "${TITLES:-20000}" "$data/products.jsonl" > "$work/titles.jsonl"
run search-cli pretrain --catalog "$work/titles.jsonl" --base-model minilm --out "$work/mlm" \
    --max-length 32 --epochs 1
for base in minilm "$work/mlm"; do
    name=$(basename "$base")
    run search-cli train-reranker --index "$index" --dataset "$data" --split train \
        --limit "${QUERIES:-1500}" --base-model "$base" --out "$work/reranker-$name" \
        --epochs 1 --max-length 32 --lr 1e-4 --negatives-per-query 6 --no-install
    run search-cli benchmark --index "$index" --dataset "$data" --split dev --limit "${DEV:-400}" \
        --stages hybrid,rerank --reranker "$work/reranker-$name" --latency-queries 0 \
        --out "$work/report-$name"
done
