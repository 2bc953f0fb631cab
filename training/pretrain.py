"""Domain-adaptive masked-language-model pre-training on catalogue text.

Continues BERT-style MLM training (15 % of tokens chosen; of those 80 % -> [MASK], 10 % ->
random token, 10 % kept, as transformers' ``DataCollatorForLanguageModeling`` does) on product
titles and descriptions, then saves the encoder as a sentence-transformers folder that the
bi-encoder and reranker trainers can start from.

Perplexity is ``exp(mean cross-entropy over masked positions)`` on a held-out slice of the
texts, with one fixed, seeded masking shared by the before and after measurements.

Sentence-transformers encoders (e.g. all-MiniLM-L6-v2) were trained without their MLM head, so
loading them with ``AutoModelForMaskedLM`` initialises the head's transform and bias at random
(the decoder is tied to the word embeddings). That is reported (``mlm_head_newly_initialised``,
a warning in the log): the "before" perplexity then measures an untrained head, and much of the
drop comes from training the head rather than adapting the encoder.

A small loop rather than transformers' ``Trainer``: the trainer needs ``accelerate``, which
this project does not install.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from shopsearch.errors import DataError, ModelError
from shopsearch.files import write_folder
from shopsearch.training.common import (
    check_out_dir,
    library_versions,
    make_optimizer,
    optimizer_step,
    seed_everything,
    write_training_json,
)

logger = logging.getLogger(__name__)


def _hf_folder(base_model: str) -> str:
    """Where the Hugging Face files of ``base_model`` live.

    A sentence-transformers folder names its Transformer module's folder in ``modules.json``
    ("" for the root, as in MiniLM); a plain BERT folder or a hub id is returned unchanged.
    """
    modules_json = Path(base_model) / "modules.json"
    if not modules_json.is_file():
        return base_model
    modules = json.loads(modules_json.read_text(encoding="utf-8"))
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith(".Router"):
            raise ModelError(
                f"{base_model} has separate query/document towers; MLM pre-training needs one "
                "encoder"
            )
        if kind.endswith(".Transformer"):
            return str(Path(base_model) / module.get("path", ""))
    raise ModelError(f"{base_model}/modules.json has no Transformer module to pre-train")


def _masked_lm_nll(model: Any, batch: dict[str, Any]) -> tuple[float, int]:
    """Summed cross-entropy over masked positions and their count, for one collated batch."""
    import torch.nn.functional as F

    labels = batch["labels"]  # (B, T), -100 where not masked
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    logits = model(**inputs).logits  # (B, T, V)
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return float(nll), int((labels != -100).sum())


def _perplexity(model: Any, batches: list[dict[str, Any]]) -> float:
    import torch

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            nll, n = _masked_lm_nll(model, batch)
            total, count = total + nll, count + n
    return math.exp(total / count) if count else float("nan")


def pretrain_mlm(
    base_model: str | Path,
    texts: list[str],
    out_dir: Path,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 5e-5,
    max_length: int = 64,
    mlm_probability: float = 0.15,
    seed: int = 0,
    eval_fraction: float = 0.05,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.06,
    device: str | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """MLM-train the encoder of ``base_model`` on ``texts`` and save it as a SentenceTransformer.

    ``base_model`` is a sentence-transformers folder (its pooling / normalisation modules and
    prompts are kept) or a BERT-like folder (it gets mean pooling). Texts are stripped, empty
    and duplicate ones dropped, then a seeded ``eval_fraction`` (at least one text) is held out.
    Returns ``perplexity_before``, ``perplexity_after``, ``train_loss`` (mean per epoch),
    ``n_train_texts``, ``n_eval_texts``, ``eval_masked_tokens``, ``mlm_head_newly_initialised``,
    ``newly_initialised`` (parameter names) and ``out_dir``; the same goes to
    ``out_dir/training.json``. The MLM head itself is not saved.
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Transformer
    from tqdm.auto import tqdm
    from transformers import AutoModelForMaskedLM, AutoTokenizer, DataCollatorForLanguageModeling

    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if not 0.0 < mlm_probability < 1.0:
        raise ValueError(f"mlm_probability must be in (0, 1), got {mlm_probability}")
    corpus = list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))
    if len(corpus) < 2:
        raise DataError(
            f"need at least 2 distinct non-empty texts for MLM pre-training, got {len(corpus)}"
        )
    out_dir = check_out_dir(out_dir, overwrite)
    base_model = str(base_model)

    seed_everything(seed)
    hf_folder = _hf_folder(base_model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(hf_folder)
        model, loading_info = AutoModelForMaskedLM.from_pretrained(
            hf_folder, output_loading_info=True
        )
    except OSError as exc:
        raise ModelError(
            f"cannot load {base_model} as a masked LM (offline? pass a local folder): {exc}"
        ) from exc
    newly_initialised = sorted(loading_info.get("missing_keys", []))
    if newly_initialised:
        logger.warning(
            "%s has no complete masked-LM head: %d tensors newly initialised (%s); "
            "perplexity_before measures an untrained head",
            base_model,
            len(newly_initialised),
            ", ".join(newly_initialised[:4]),
        )
    model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    order = np.random.default_rng(seed).permutation(len(corpus))
    n_eval = min(max(1, round(eval_fraction * len(corpus))), len(corpus) - 1)
    eval_texts = [corpus[i] for i in order[:n_eval]]
    train_texts = [corpus[i] for i in order[n_eval:]]

    def encode(batch_texts: list[str]) -> list[dict[str, Any]]:
        enc = tokenizer(
            batch_texts, truncation=True, max_length=max_length, return_special_tokens_mask=True
        )
        return [{key: enc[key][i] for key in enc} for i in range(len(batch_texts))]

    def to_device(batch: dict[str, Any]) -> dict[str, Any]:
        return {key: value.to(model.device) for key, value in batch.items()}

    # One masking of the eval texts, drawn once, so before/after see the same masked positions.
    eval_collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=mlm_probability, seed=seed + 1
    )
    eval_features = encode(eval_texts)
    eval_batches = [
        to_device(eval_collator(eval_features[i : i + batch_size]))
        for i in range(0, len(eval_features), batch_size)
    ]
    eval_masked = int(sum(int((b["labels"] != -100).sum()) for b in eval_batches))
    perplexity_before = _perplexity(model, eval_batches)
    logger.info(
        "held-out MLM perplexity before: %.2f (%d masked tokens)", perplexity_before, eval_masked
    )

    train_collator = DataCollatorForLanguageModeling(
        tokenizer, mlm_probability=mlm_probability, seed=seed
    )
    train_features = encode(train_texts)
    steps_per_epoch = math.ceil(len(train_features) / batch_size)
    optimizer, scheduler = make_optimizer(
        model, learning_rate, weight_decay, steps_per_epoch * epochs, warmup_ratio
    )
    rng = np.random.default_rng(seed)
    epoch_losses: list[float] = []
    for epoch in range(1, epochs + 1):
        model.train()
        perm = rng.permutation(len(train_features))
        losses = []
        for start in tqdm(
            range(0, len(perm), batch_size),
            desc=f"MLM epoch {epoch}",
            disable=not progress,
            leave=False,
        ):
            batch = to_device(
                train_collator([train_features[i] for i in perm[start : start + batch_size]])
            )
            if not bool((batch["labels"] != -100).any()):
                continue  # nothing masked in this (tiny) batch: no loss to learn from
            loss = model(**batch).loss  # mean cross-entropy over the masked positions
            optimizer_step(model, loss, optimizer, scheduler)
            losses.append(float(loss.detach()))
        epoch_losses.append(float(np.mean(losses)) if losses else float("nan"))
        logger.info("MLM epoch %d: train loss %.4f", epoch, epoch_losses[-1])
    perplexity_after = _perplexity(model, eval_batches)
    logger.info("held-out MLM perplexity after: %.2f", perplexity_after)

    # Put the adapted encoder into the base's sentence-transformers pipeline (pooling, normalise,
    # prompts), or into a fresh mean-pooling one for a plain BERT folder.
    try:
        st_model = SentenceTransformer(base_model, device="cpu")
    except OSError as exc:
        raise ModelError(
            f"cannot load {base_model} as a sentence-transformers model: {exc}"
        ) from exc
    st_transformer = next((m for m in st_model.modules() if isinstance(m, Transformer)), None)
    if st_transformer is None:
        raise ModelError(
            f"{base_model} has no Transformer module to receive the pre-trained weights"
        )
    encoder_state = {k: v.detach().cpu() for k, v in model.base_model.state_dict().items()}
    result = st_transformer.auto_model.load_state_dict(encoder_state, strict=False)
    # The MLM model has no pooler (BERT's [CLS] head); everything else must line up exactly.
    missing = [k for k in result.missing_keys if not k.startswith("pooler.")]
    if missing or result.unexpected_keys:
        raise ModelError(
            f"the MLM encoder does not match {base_model}'s encoder: missing {missing[:5]}, "
            f"unexpected {list(result.unexpected_keys)[:5]}"
        )

    report: dict[str, Any] = {
        "perplexity_before": perplexity_before,
        "perplexity_after": perplexity_after,
        "train_loss": epoch_losses,
        "n_train_texts": len(train_texts),
        "n_eval_texts": len(eval_texts),
        "eval_masked_tokens": eval_masked,
        "mlm_head_newly_initialised": bool(newly_initialised),
        "newly_initialised": newly_initialised,
        "out_dir": str(out_dir),
    }
    manifest = {
        "kind": "mlm-pretraining",
        "base_model": base_model,
        "config": {
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "max_length": max_length,
            "mlm_probability": mlm_probability,
            "seed": seed,
            "eval_fraction": eval_fraction,
            "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio,
        },
        **report,
        "versions": library_versions(),
    }

    def write(folder: Path) -> None:
        st_model.save(str(folder), create_model_card=False)
        write_training_json(folder, manifest)

    write_folder(out_dir, write)
    return report
