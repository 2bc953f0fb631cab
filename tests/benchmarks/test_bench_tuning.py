from shopsearch.benchmarks.tuning import default_grid, tune_fusion
from shopsearch.retrieval.fusion import FusionConfig
from shopsearch.retrieval.types import Hit


def test_tuning_prefers_the_retriever_that_finds_the_relevant_products():
    qrels = {"q1": {"good1": 2}, "q2": {"good2": 2}}
    # BM25 puts the relevant product 5th, dense puts it 1st: more dense weight must win.
    sparse = {q: [Hit(f"x{i}", 10.0 - i) for i in range(4)] + [Hit(f"good{q[-1]}", 5.0)]
              for q in qrels}
    dense = {q: [Hit(f"good{q[-1]}", 0.9)] + [Hit(f"x{i}", 0.5 - i / 10) for i in range(4)]
             for q in qrels}
    current = FusionConfig(method="rrf", weights=(1.0, 0.25))
    result = tune_fusion(sparse, dense, qrels, current=current, metric="nDCG@10", k=10)
    assert result.best_score == 1.0 and result.current_score < 1.0
    assert len(result.table) == len(default_grid())
    best = result.best
    assert (best.method == "rrf" and best.weights[1] > best.weights[0]) or (
        best.method == "convex" and best.alpha > 0.5)
