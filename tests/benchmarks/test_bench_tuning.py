from shopsearch.benchmarks.tuning import default_grid, tune_fusion
from shopsearch.retrieval.fusion import FusionConfig
from shopsearch.retrieval.types import Hit


def test_tuning_prefers_the_retriever_that_finds_the_relevant_products():
    qrels = {"q1": {"good1": 2}, "q2": {"good2": 2}}
    # BM25 puts the relevant product 5th, dense puts it 1st: more dense weight must win.
    sparse = {
        q: [Hit(f"x{i}", 10.0 - i) for i in range(4)] + [Hit(f"good{q[-1]}", 5.0)] for q in qrels
    }
    dense = {
        q: [Hit(f"good{q[-1]}", 0.9)] + [Hit(f"x{i}", 0.5 - i / 10) for i in range(4)]
        for q in qrels
    }
    current = FusionConfig(method="rrf", weights=(1.0, 0.25))
    result = tune_fusion(sparse, dense, qrels, current=current, metric="nDCG@10", k=10)
    assert result.best_score == 1.0 and result.current_score < 1.0
    assert len(result.table) == len(default_grid())
    best = result.best
    assert (best.method == "rrf" and best.weights[1] > best.weights[0]) or (
        best.method == "convex" and best.alpha > 0.5
    )


def _fused_lists():
    # Two queries, fused order puts the relevant product 3rd of 5.
    qrels = {"q1": {"good1": 2}, "q2": {"good2": 2}}
    fused = {
        q: [Hit("a", 0.9), Hit("b", 0.8), Hit(f"good{q[-1]}", 0.7), Hit("c", 0.6), Hit("d", 0.5)]
        for q in qrels
    }
    return qrels, fused


def test_blend_tuning_trusts_a_reranker_that_knows_and_ignores_one_that_does_not():
    from shopsearch.benchmarks.tuning import blended_run, tune_blend
    from shopsearch.rerank.blend import BlendConfig

    qrels, fused = _fused_lists()
    knows = {q: [0.0, 0.0, 5.0, 0.0, 0.0] for q in qrels}
    result = tune_blend(fused, knows, qrels, weights=[0.0, 0.5, 1.0], tops=[2, 3])
    assert result.fused_score < 1.0 and result.best_score == 1.0
    assert result.best == BlendConfig(weight=1.0, top=3)  # depth 2 cannot reach rank 3
    assert len(result.table) == 6
    # A reranker that pushes the relevant product down loses to the fused order (weight 0).
    wrong = {q: [5.0, 4.0, -9.0, 3.0, 2.0] for q in qrels}
    result = tune_blend(fused, wrong, qrels, weights=[0.0, 0.5, 1.0], tops=[5])
    assert result.best.weight == 0.0 and result.best_score == result.fused_score
    run = blended_run(fused, wrong, BlendConfig(weight=1.0, top=3))["q1"]
    assert [h.product_id for h in run] == ["a", "b", "good1", "c", "d"] or [
        h.product_id for h in run
    ][:3] == ["a", "b", "good1"]
    assert [h.score for h in run] == sorted((h.score for h in run), reverse=True)
