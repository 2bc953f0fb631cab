"""Retrieval metrics with trec_eval semantics, computed through ir-measures' pytrec_eval
provider (trec_eval's own C code), so numbers match ``trec_eval`` to the last digit.

Conventions (the same as ``trec_eval -c -m <measure> qrels.txt run``)
---------------------------------------------------------------------
- **Ranking.** Only the score orders a query's results: descending score, and **ties are
  broken by product id in descending (reverse byte) order**, as trec_eval does. The engine
  and :func:`~shopsearch.benchmarks.formats.write_run` list ties in ascending id order, so for
  exactly tied scores the displayed order and the evaluated order differ; run files keep the
  scores bit-exact, so evaluating a run file and the in-memory run give identical numbers.
  :func:`count_tied_queries` reports how often ties occur in the top ranks.
- **Relevance.** Binary measures (Recall, P, MRR, Success) count a product as relevant when its
  grade is >= 1 (ir-measures' default ``rel=1``, trec_eval's default relevance level).
  Unjudged products are not relevant.
- **nDCG.** Gain = the qrels grade (linear, trec_eval's ``ndcg_cut``), discount
  ``1 / log2(rank + 1)``; the ideal ranking sorts *all* judged products of the query by grade.
- **Recall@k** = relevant products in the top k / all relevant judged products of the query.
- **P@k** divides by k even when fewer than k products were returned.
- **MRR@k** (ir-measures ``RR@k``) = 1 / rank of the first relevant product within the top k,
  else 0; computed as trec_eval ``recip_rank`` on the run cut to its top k
  (``trec_eval -M k -m recip_rank``). ir-measures would route ``RR@k`` to its msmarco
  provider, which breaks ties differently; we keep trec_eval's order for every measure.
- **Success@k** = 1 if any relevant product is in the top k.
- **Which queries are averaged.** Every query in the qrels that has at least one relevant
  product (``require_relevant=True``); queries whose judged products are all grade 0 are left
  out, because every system scores 0 on them and they would only dilute averages and
  significance tests (:func:`evaluable_qrels` returns the kept judgements; the benchmark
  runner writes them to ``qrels.txt`` so that ``trec_eval -c`` reproduces the numbers).
  A kept query that is missing from the run, or has no results, scores 0 on every measure
  (trec_eval ``-c``; plain trec_eval and ir-measures' pytrec_eval would silently drop it).
  Queries in the run but not in the qrels are ignored.
- **Aggregate** = arithmetic mean over the evaluated queries.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

#: The default report: names use the project's spelling (Recall, MRR); see :func:`parse_measure`.
DEFAULT_MEASURES: tuple[str, ...] = (
    "Recall@10",
    "Recall@100",
    "Recall@1000",
    "nDCG@10",
    "nDCG@100",
    "MRR@10",
    "P@10",
    "Success@10",
)

# Our display names -> ir-measures names. Only whole measure names are mapped, never substrings.
_ALIASES = {"Recall": "R", "MRR": "RR"}
_DISPLAY = {"R": "Recall", "RR": "MRR"}

Qrels = Mapping[str, Mapping[str, int]]
Run = Mapping[str, Mapping[str, float]]


def parse_measure(measure: Any) -> Any:
    """Turn ``"Recall@100"``, ``"MRR@10"``, ``"nDCG@10"`` or ``"R(rel=2)@100"`` (any ir-measures
    syntax) into an ir-measures measure object; measure objects pass through."""
    import ir_measures

    if not isinstance(measure, str):
        return measure
    text = measure.strip()
    head = text.split("@", 1)[0].split("(", 1)[0]
    if head in _ALIASES:
        text = _ALIASES[head] + text[len(head) :]
    try:
        return ir_measures.parse_measure(text)
    except Exception as exc:  # ir-measures raises bare ValueError/NameError on bad syntax
        raise ValueError(
            f"unknown measure {measure!r} (examples: Recall@100, nDCG@10, MRR@10, "
            f"P@10, Success@10, R(rel=2)@100)"
        ) from exc


def measure_name(measure: Any) -> str:
    """The display name of a measure: ir-measures' name with R -> Recall and RR -> MRR."""
    m = parse_measure(measure)
    text = str(m)
    if m.NAME in _DISPLAY:
        text = _DISPLAY[m.NAME] + text[len(m.NAME) :]
    return text


def trec_order(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """A query's results in trec_eval's evaluation order: score descending, then product id
    descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def evaluable_qrels(
    qrels: Qrels, *, require_relevant: bool = True, relevance_level: int = 1
) -> dict[str, dict[str, int]]:
    """The judgements :func:`evaluate` averages over: all queries, or (default) only those
    with at least one product of grade >= ``relevance_level``."""
    return {
        str(q): {str(d): int(g) for d, g in docs.items()}
        for q, docs in qrels.items()
        if not require_relevant or any(g >= relevance_level for g in docs.values())
    }


def evaluate(
    qrels: Qrels,
    run: Run,
    measures: Iterable[Any] = DEFAULT_MEASURES,
    *,
    require_relevant: bool = True,
) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Score a run against graded judgements with trec_eval semantics (see the module
    docstring for every convention).

    ``qrels``: ``{query_id: {product_id: grade}}``; ``run``: ``{query_id: {product_id:
    score}}`` (any depth; cutoffs come from the measures); ``measures``: display names
    (``"Recall@100"``, ``"MRR@10"``), any ir-measures syntax or measure objects.

    Returns ``(per_query, aggregate)``: ``per_query[name][query_id]`` for every evaluated
    query (in qrels order), and ``aggregate[name]`` = their mean; names are
    :func:`measure_name` of each measure.
    """
    import ir_measures

    parsed = [parse_measure(m) for m in measures]
    if not parsed:
        raise ValueError("no measures given")
    names = [measure_name(m) for m in parsed]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate measures in {names}")
    eval_qrels = evaluable_qrels(qrels, require_relevant=require_relevant)
    if not eval_qrels:
        raise ValueError(
            "no query has a relevant judged product (grade >= 1); nothing to evaluate"
            if require_relevant
            else "qrels are empty"
        )
    # Every evaluated query gets an entry, empty when the system returned nothing: pytrec_eval
    # then scores it (0 for these measures) instead of dropping it, like trec_eval -c.
    full_run = {q: {str(d): float(s) for d, s in run.get(q, {}).items()} for q in eval_qrels}

    provider = ir_measures.pytrec_eval
    direct = [m for m in parsed if m.NAME != "RR" and provider.supports(m)]
    cut_rr = [m for m in parsed if m.NAME == "RR"]
    other = [m for m in parsed if m not in direct and m not in cut_rr]

    values: dict[Any, dict[str, float]] = {m: {} for m in parsed}
    if direct:
        for metric in provider.evaluator(direct, eval_qrels).iter_calc(full_run):
            values[metric.measure][metric.query_id] = float(metric.value)
    for m in cut_rr:
        cutoff = m.params.get("cutoff")
        cut_run = full_run
        if cutoff is not None:  # evaluate the top-k in trec_eval's order (trec_eval -M k)
            cut_run = {q: dict(trec_order(docs)[:cutoff]) for q, docs in full_run.items()}
        for metric in provider.evaluator([_rr_without_cutoff(m)], eval_qrels).iter_calc(cut_run):
            values[m][metric.query_id] = float(metric.value)
    if other:
        # Measures trec_eval lacks (e.g. Judged@k) come from ir-measures' other providers,
        # whose tie handling may differ from trec_eval's. Some of them fail on empty rankings;
        # ir-measures fills queries missing from the run with each measure's default (0).
        non_empty = {q: docs for q, docs in full_run.items() if docs}
        for metric in ir_measures.evaluator(other, eval_qrels).iter_calc(non_empty):
            values[metric.measure][metric.query_id] = float(metric.value)

    per_query: dict[str, dict[str, float]] = {}
    aggregate: dict[str, float] = {}
    for m, name in zip(parsed, names):
        got = values[m]
        missing = [q for q in eval_qrels if q not in got]
        if missing:  # pragma: no cover - pytrec_eval scores every query it is given
            raise RuntimeError(f"{name}: no value for {len(missing)} queries, e.g. {missing[0]}")
        per_query[name] = {q: got[q] for q in eval_qrels}
        aggregate[name] = math.fsum(per_query[name].values()) / len(eval_qrels)
    return per_query, aggregate


def _rr_without_cutoff(m: Any) -> Any:
    """``RR@k(rel=r)`` -> ``RR(rel=r)`` (pytrec_eval's recip_rank has no cutoff)."""
    import ir_measures

    params = {k: v for k, v in m.params.items() if k != "cutoff"}
    return ir_measures.measures.RR(**params) if params else ir_measures.measures.RR


def recall_curve(
    qrels: Qrels, run: Run, depth: int, *, require_relevant: bool = True, relevance_level: int = 1
) -> list[float]:
    """Mean Recall@k for k = 1..depth, with the same conventions as :func:`evaluate`
    (trec_eval order, relevant = grade >= ``relevance_level``, missing queries score 0).
    ``curve[k - 1]`` equals ``evaluate(..., ["Recall@k"])`` for the default level."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, not {depth}")
    eval_qrels = evaluable_qrels(
        qrels, require_relevant=require_relevant, relevance_level=relevance_level
    )
    totals = [0.0] * depth
    for qid, docs in eval_qrels.items():
        relevant = {d for d, g in docs.items() if g >= relevance_level}
        if not relevant:
            continue
        found = 0
        ranked = trec_order(run.get(qid, {}))[:depth]
        for rank in range(depth):
            if rank < len(ranked) and ranked[rank][0] in relevant:
                found += 1
            totals[rank] += found / len(relevant)
    n = len(eval_qrels)
    return [t / n for t in totals] if n else [0.0] * depth


def count_tied_queries(run: Run, k: int = 10) -> int:
    """How many queries have two equal scores among their top ``k`` (where the evaluated
    order, product id descending, may differ from the displayed one)."""
    count = 0
    for docs in run.values():
        top = [score for _, score in trec_order(docs)[:k]]
        if len(set(top)) < len(top):
            count += 1
    return count


def hits_to_run(results: Mapping[str, Sequence[Any]]) -> dict[str, dict[str, float]]:
    """``{query_id: [Hit | (product_id, score)]}`` -> ``{query_id: {product_id: score}}``,
    keeping the first occurrence of a product listed twice."""
    run: dict[str, dict[str, float]] = {}
    for qid, hits in results.items():
        docs: dict[str, float] = {}
        for hit in hits:
            pid, score = (hit.product_id, hit.score) if hasattr(hit, "product_id") else hit
            docs.setdefault(str(pid), float(score))
        run[qid] = docs
    return run
