#!/usr/bin/env bash
# Home Depot end to end: every number in the README's quality table comes from this script.
#   bash benchmarks/homedepot.sh [WORKDIR]     (about 1.5 hours on 2 idle CPU cores)
# Stages: BM25, zero-shot dense, hybrid; fine-tuned dense (train queries), hybrid with fusion
# tuned on train queries; reranker fine-tuned on train judgements, its blend tuned on held-out
# train queries; all evaluated on dev.
# Environment knobs: MODEL (bi-encoder, default minilm), RERANKER_BASE (default minilm),
# DATA (default ../shared/data/homedepot), RERANK_QUERIES / RETRIEVER_QUERIES (train
# queries used, to bound CPU time; the reranker uses all 9,440 unless told), LTR_SKIP /
# LTR_QUERIES (train queries LambdaMART learns from: set LTR_SKIP past RERANK_QUERIES).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
work="${1:-hd-work}"
data="${DATA:-$here/../../shared/data/homedepot}"
model="${MODEL:-minilm}"
reranker_base="${RERANKER_BASE:-minilm}"
mkdir -p "$work"
export HF_HUB_OFFLINE=1
run() { echo "+ $*" >&2; /usr/bin/time -f "  (%e s, %M KB peak)" "$@"; }

# 1. Index the full catalogue (54,667 titles) with BM25 + the zero-shot bi-encoder
#    (kept if WORKDIR already holds one, so an interrupted run can resume).
[ -f "$work/index/manifest.json" ] || run search-cli build-index --catalog "$data/products.jsonl" --index "$work/index" --model "$model"
run search-cli benchmark --index "$work/index" --dataset "$data" --split dev \
    --stages bm25,dense,hybrid --out "$work/report-zero-shot"

# 2. Fine-tune the two towers on train judgements (grade >= 1 positives, BM25 hard
#    negatives), rebuild the index's dense part, tune fusion on 1,000 other train queries.
run search-cli train-retriever --index "$work/index" --dataset "$data" --split train \
    --limit "${RETRIEVER_QUERIES:-1000}" --out "$work/retriever" --epochs 1
run search-cli tune-fusion --index "$work/index" --dataset "$data" --split train \
    --skip "${RETRIEVER_QUERIES:-1000}" --limit 1000

# 3. Fine-tune the reranker on train judgements (label = grade / 2; unjudged negatives sampled
#    from the hybrid ranking it will rerank), then tune its blend with the fused score and
#    its depth on the train queries it held out (its dev and test split).
run search-cli train-reranker --index "$work/index" --dataset "$data" --split train \
    ${RERANK_QUERIES:+--limit "$RERANK_QUERIES"} --base-model "$reranker_base" \
    --out "$work/reranker" --epochs 1 --max-length 32 --lr 1e-4 --negatives-per-query 6
run search-cli tune-rerank --index "$work/index" --dataset "$data" --split train --held-out \
    --tops 10,20,30

# 4. Serve the reranker as OpenVINO static int8 (calibrated on 300 train queries no step above
#    used) and the query tower on ONNX Runtime: the configuration README "Speed" measures.
sed -n 6001,6300p "$data/queries.train.tsv" > "$work/calibration-queries.tsv"
run search-cli optimize-reranker --index "$work/index" --runtime openvino-int8-static \
    --encoder-runtime onnx --queries "$work/calibration-queries.tsv" --out "$work/reranker-fast"

# 5. LambdaMART over the reranked candidates, on train queries the reranker did not see.
run search-cli train-ltr --index "$work/index" --dataset "$data" --split train \
    --skip "${LTR_SKIP:-3000}" --limit "${LTR_QUERIES:-3000}" --out "$work/ltr" --threads 2

# 6. Every stage on dev, with the fine-tuned models.
run search-cli benchmark --index "$work/index" --dataset "$data" --split dev \
    --stages bm25,dense,hybrid,rerank,ltr --out "$work/report-fine-tuned"
