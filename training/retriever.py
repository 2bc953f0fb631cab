"""Fine-tune the two-tower (bi-encoder) retriever, DPR style.

Objective: ``MultipleNegativesRankingLoss`` (InfoNCE with cosine similarity scaled by 20) over
in-batch negatives plus each query's own hard negatives as extra columns; with
``mini_batch_size`` set, its gradient-cached variant ``CachedMultipleNegativesRankingLoss``
(same loss, bounded memory, for large batches).

Why a small loop rather than ``SentenceTransformerTrainer``: the trainer needs ``datasets`` and
``accelerate``, which this project does not install. The loop reuses the library's losses,
``model.preprocess`` (which applies the prompt and, for split towers, the route) and
``model.save``; it adds what the trainer's ``NO_DUPLICATES`` sampler does (no text twice in a
batch, so an in-batch "negative" is never a copy of the positive) and a per-epoch dev
evaluation that keeps the best epoch's weights.

Prompts: the query column is encoded with the query prompt and every document column
(positive and negatives) with the document prompt. They are saved in the model's
``config_sentence_transformers.json`` as ``prompts["query"]`` and ``prompts["document"]``, so
``model.encode_query`` / ``model.encode_document`` apply them after reloading. An empty prompt
in the config keeps the base model's saved one (e.g. e5's "query: " / "passage: ").
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.errors import DataError, ModelError
from shopsearch.files import write_folder
from shopsearch.training.common import (
    TrainingResult,
    check_out_dir,
    library_versions,
    make_optimizer,
    optimizer_step,
    seed_everything,
    snapshot_state,
    write_training_json,
)

logger = logging.getLogger(__name__)

#: One training example: (query, positive document text, hard negative document texts).
BiEncoderExample = tuple[str, str, Sequence[str]]


@dataclass
class BiEncoderTrainingConfig:
    """Hyper-parameters for :func:`train_bi_encoder`.

    ``hard_negatives_per_query``: number of negative columns; an example with fewer hard
    negatives is topped up with other examples' positives (random negatives), one with more is
    cut to the first ones. 0 trains on in-batch negatives only.
    ``query_prompt`` / ``document_prompt``: "" keeps the base model's saved prompt (or none).
    ``shared_towers=False`` splits the base into two copies (a ``Router`` with a "query" and a
    "document" route), doubling the parameters; a base that is already split stays split.
    ``mini_batch_size``: if set, use the gradient-cached loss with this forward chunk size.
    """

    epochs: int = 1
    batch_size: int = 64
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_length: int = 64
    seed: int = 0
    hard_negatives_per_query: int = 1
    query_prompt: str = ""
    document_prompt: str = ""
    shared_towers: bool = True
    mini_batch_size: int | None = None


# --------------------------------------------------------------------------------------------
# Data


def mine_hard_negatives(
    queries: Mapping[str, str],
    positives: Mapping[str, set[str]],
    search: Callable[[list[str], int], list[list[str]]],
    *,
    skip_top: int = 3,
    depth: int = 50,
    per_query: int = 3,
    known_relevant: Mapping[str, set[str]] | None = None,
    rng_seed: int = 0,
    batch_size: int = 256,
) -> dict[str, list[str]]:
    """Sample hard negatives from a first-stage ranking (e.g. BM25) for each query with positives.

    ``search(query_texts, k)`` returns ranked product ids per query. For each query the
    candidates are ranks ``skip_top .. depth-1`` (0-based) minus its positives and minus
    ``known_relevant`` (e.g. clicked or judged-relevant products): the very top of an unjudged
    ranking is too often relevant, so skipping it guards against false negatives. ``per_query``
    candidates are drawn uniformly without replacement and returned in rank order; fewer (or
    none) when the candidates run out. Queries appear in ``positives`` order.
    """
    if skip_top < 0 or depth < 1 or per_query < 0:
        raise ValueError("need skip_top >= 0, depth >= 1 and per_query >= 0")
    missing = [qid for qid in positives if qid not in queries]
    if missing:
        raise DataError(
            f"{len(missing)} query ids have positives but no text, e.g. {', '.join(missing[:5])}"
        )
    rng = np.random.default_rng(rng_seed)
    qids = list(positives)
    result: dict[str, list[str]] = {}
    for start in range(0, len(qids), batch_size):
        chunk = qids[start : start + batch_size]
        rankings = search([queries[qid] for qid in chunk], depth)
        if len(rankings) != len(chunk):
            raise ValueError(f"search returned {len(rankings)} rankings for {len(chunk)} queries")
        for qid, ranked in zip(chunk, rankings):
            excluded = set(positives[qid]) | set((known_relevant or {}).get(qid, ()))
            candidates = [
                pid for pid in dict.fromkeys(ranked[skip_top:depth]) if pid not in excluded
            ]
            take = min(per_query, len(candidates))
            picked = (
                np.sort(rng.choice(len(candidates), size=take, replace=False)).tolist()
                if take
                else []
            )
            result[qid] = [candidates[int(i)] for i in picked]
    return result


def build_bi_encoder_examples(
    queries: Mapping[str, str],
    positives: Mapping[str, Sequence[str]],
    product_text: Mapping[str, str],
    hard_negatives: Mapping[str, Sequence[str]] | None = None,
) -> list[BiEncoderExample]:
    """One ``(query, positive_text, negative_texts)`` per (query, positive product) pair.

    Unknown query or product ids raise DataError.
    """
    examples: list[BiEncoderExample] = []
    for qid, pids in positives.items():
        if qid not in queries:
            raise DataError(f"query id {qid} has positives but no text")
        negatives = [
            product_text[pid] for pid in (hard_negatives or {}).get(qid, ()) if pid in product_text
        ]
        for pid in pids:
            if pid not in product_text:
                raise DataError(f"positive product {pid} of query {qid} is not in the catalogue")
            examples.append((queries[qid], product_text[pid], negatives))
    return examples


def _fill_negative_columns(
    examples: Sequence[BiEncoderExample], k: int, rng: np.random.Generator
) -> list[list[str]]:
    """Rows ``[query, positive, neg_1 .. neg_k]``: hard negatives first, topped up at random."""
    positives = [ex[1] for ex in examples]
    rows = []
    for query, positive, negatives in examples:
        chosen = [n for n in negatives if n != positive][:k]
        tries = 0
        while len(chosen) < k and tries < 20 * k:
            tries += 1
            other = positives[int(rng.integers(len(positives)))]
            if other != positive and other not in chosen:
                chosen.append(other)
        if len(chosen) < k:
            raise DataError(
                f"cannot find {k} distinct negatives for query {query!r}: too few distinct "
                "positives"
            )
        rows.append([query, positive, *chosen])
    return rows


def no_duplicate_batches(
    rows: Sequence[Sequence[str]], order: Sequence[int], batch_size: int
) -> list[list[int]]:
    """Split ``order`` into batches in which no text appears twice (across all columns).

    A row that clashes with the current batch waits for a later one, as the library's
    ``NoDuplicatesBatchSampler`` does; the last batches may be smaller.
    """
    remaining = list(order)
    batches: list[list[int]] = []
    while remaining:
        batch: list[int] = []
        seen: set[str] = set()
        deferred: list[int] = []
        for idx in remaining:
            texts = set(rows[idx])
            if len(batch) < batch_size and not texts & seen:
                batch.append(idx)
                seen |= texts
            else:
                deferred.append(idx)
        batches.append(batch)
        remaining = deferred
    return batches


# --------------------------------------------------------------------------------------------
# Model


def _load_sentence_transformer(base_model: str | Path, device: str | None) -> Any:
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(str(base_model), device=device)
    except OSError as exc:
        raise ModelError(
            f"cannot load bi-encoder {base_model!s} (offline? pass a local folder): {exc}"
        ) from exc


def _has_router(model: Any) -> bool:
    from sentence_transformers.base.modules import Router

    return any(isinstance(module, Router) for module in model.children())


def _split_towers(model: Any) -> Any:
    """Two independent copies of the base's modules behind a query/document ``Router``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Router

    modules = list(model.children())
    router = Router.for_query_document(
        query_modules=[copy.deepcopy(m) for m in modules], document_modules=modules
    )
    return SentenceTransformer(
        modules=[router],
        device=str(model.device),
        prompts=dict(model.prompts),
        similarity_fn_name=model.similarity_fn_name,
    )


def _effective_prompts(model: Any, config: BiEncoderTrainingConfig) -> tuple[str, str]:
    saved = model.prompts or {}
    query = config.query_prompt or saved.get("query") or ""
    document = config.document_prompt or next(
        (saved[name] for name in ("document", "passage", "corpus") if saved.get(name)), ""
    )
    return query, document


def _column_features(model: Any, texts: list[str], prompt: str, task: str) -> dict[str, Any]:
    from sentence_transformers.util import batch_to_device

    features = model.preprocess(texts, prompt=prompt or None, task=task)
    return batch_to_device(features, model.device)


def _batch_features(
    model: Any, rows: Sequence[Sequence[str]], prompts: tuple[str, str]
) -> list[dict[str, Any]]:
    """One feature dict per column: the queries, the positives, then each negative column."""
    columns = list(zip(*rows))
    features = [_column_features(model, list(columns[0]), prompts[0], "query")]
    features += [_column_features(model, list(col), prompts[1], "document") for col in columns[1:]]
    return features


def train_bi_encoder(
    base_model: str | Path,
    train: Sequence[BiEncoderExample],
    dev: Sequence[BiEncoderExample] | None,
    out_dir: Path,
    config: BiEncoderTrainingConfig | None = None,
    *,
    dev_eval: Callable[[Any], Mapping[str, float]] | None = None,
    dev_metric: str | None = None,
    progress: bool = True,
    device: str | None = None,
    overwrite: bool = False,
) -> TrainingResult:
    """Fine-tune a sentence-transformers bi-encoder and save it with its prompts.

    After each epoch (and once before training, as epoch 0) the model is evaluated: the mean
    MNRL loss on ``dev`` (batches of ``batch_size``, so comparable across epochs only) and the
    metrics returned by ``dev_eval(model)`` (e.g. MRR@10 of a small retrieval run). The best
    epoch (>= 1) is the one with the highest ``dev_metric`` of ``dev_eval`` (default: its only
    key), else the lowest dev loss, else the last; its weights are saved to ``out_dir`` as a
    standard SentenceTransformer folder, plus ``training.json`` (a non-empty ``out_dir`` is
    refused unless ``overwrite``).
    """
    import torch
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from tqdm.auto import tqdm

    config = config or BiEncoderTrainingConfig()
    if not train:
        raise DataError("no training examples")
    if config.epochs < 1 or config.batch_size < 2:
        raise ValueError("need epochs >= 1 and batch_size >= 2 (in-batch negatives)")
    if config.hard_negatives_per_query < 0:
        raise ValueError("hard_negatives_per_query must be >= 0")
    out_dir = check_out_dir(out_dir, overwrite)

    seed_everything(config.seed)
    model = _load_sentence_transformer(base_model, device)
    if not config.shared_towers and not _has_router(model):
        model = _split_towers(model)
    model.max_seq_length = config.max_length
    prompts = _effective_prompts(model, config)
    model.prompts = {**model.prompts, "query": prompts[0], "document": prompts[1]}

    rng = np.random.default_rng(config.seed)
    k = config.hard_negatives_per_query
    train_rows = _fill_negative_columns(train, k, rng)
    dev_rows = _fill_negative_columns(dev, k, np.random.default_rng(config.seed + 1)) if dev else []
    plans = [
        no_duplicate_batches(
            train_rows, rng.permutation(len(train_rows)).tolist(), config.batch_size
        )
        for _ in range(config.epochs)
    ]
    optimizer, scheduler = make_optimizer(
        model,
        config.learning_rate,
        config.weight_decay,
        sum(len(plan) for plan in plans),
        config.warmup_ratio,
    )
    loss_fn: Any
    if config.mini_batch_size:
        loss_fn = CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=config.mini_batch_size, show_progress_bar=False
        )
    else:
        loss_fn = MultipleNegativesRankingLoss(model)
    eval_loss_fn = MultipleNegativesRankingLoss(model)

    selected_metric = dev_metric  # resolved at the first evaluation when None

    def evaluate(epoch: int, train_loss: float | None) -> dict[str, Any]:
        nonlocal selected_metric
        model.eval()
        entry: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss}
        if dev_rows:
            with torch.no_grad():
                losses = [
                    float(
                        eval_loss_fn(
                            _batch_features(model, dev_rows[s : s + config.batch_size], prompts),
                            None,
                        )
                    )
                    for s in range(0, len(dev_rows), config.batch_size)
                ]
            entry["dev_loss"] = float(np.mean(losses))
        if dev_eval is not None:
            metrics = {key: float(value) for key, value in dict(dev_eval(model)).items()}
            if selected_metric is None:
                if len(metrics) != 1:
                    raise ValueError(
                        f"dev_eval returned {sorted(metrics)}: pass dev_metric to say which "
                        "to maximise"
                    )
                selected_metric = next(iter(metrics))
            if selected_metric not in metrics:
                raise ValueError(
                    f"dev_eval did not return {selected_metric!r}; it returned {sorted(metrics)}"
                )
            entry.update(metrics)
        logger.info("epoch %d: %s", epoch, entry)
        return entry

    def selection_score(entry: dict[str, Any]) -> float | None:
        """Higher is better; None when there is nothing to select on."""
        if dev_eval is not None and selected_metric is not None:
            return entry[selected_metric]
        if "dev_loss" in entry:
            return -entry["dev_loss"]
        return None

    history = [evaluate(0, None)]
    best_epoch, best_score, best_state = config.epochs, -math.inf, None
    for epoch, plan in enumerate(plans, start=1):
        model.train()
        losses = []
        for batch in tqdm(plan, desc=f"epoch {epoch}", disable=not progress, leave=False):
            features = _batch_features(model, [train_rows[i] for i in batch], prompts)
            loss = loss_fn(features, None)  # scalar: mean InfoNCE over the batch's queries
            optimizer_step(model, loss, optimizer, scheduler)
            losses.append(float(loss.detach()))
        entry = evaluate(epoch, float(np.mean(losses)))
        history.append(entry)
        score = selection_score(entry)
        if score is not None and score > best_score:
            best_epoch, best_score = epoch, score
            best_state = snapshot_state(model) if epoch < config.epochs else None
    if best_state is not None and best_epoch != config.epochs:
        model.load_state_dict(best_state)
    model.eval()

    manifest = {
        "kind": "bi-encoder",
        "objective": (
            "CachedMultipleNegativesRankingLoss"
            if config.mini_batch_size
            else "MultipleNegativesRankingLoss"
        )
        + " (in-batch + hard negatives, cosine, scale 20)",
        "base_model": str(base_model),
        "config": asdict(config),
        "prompts": {"query": prompts[0], "document": prompts[1]},
        "history": history,
        "best_epoch": best_epoch,
        "selected_on": selected_metric
        if dev_eval is not None
        else ("-dev_loss" if dev_rows else "last epoch"),
        "data": {
            "n_train": len(train),
            "n_dev": len(dev or ()),
            "batches_per_epoch": [len(p) for p in plans],
        },
        "versions": library_versions(),
    }

    def write(folder: Path) -> None:
        model.save(str(folder), create_model_card=False)
        write_training_json(folder, manifest)

    write_folder(out_dir, write)
    return TrainingResult(
        out_dir=out_dir,
        history=history,
        best_epoch=best_epoch,
        extra={"prompts": {"query": prompts[0], "document": prompts[1]}},
    )
