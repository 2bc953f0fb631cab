"""Demo queries and their attribute-derived judgements."""

from __future__ import annotations

import pytest

from shopsearch.demo.catalog import TYPES, VOCAB, _slots, generate_catalog, product_facets
from shopsearch.demo.queries import (
    QUERY_RULES,
    demo_qrels,
    demo_queries,
    write_qrels_trec,
    write_queries_tsv,
)
from shopsearch.errors import DataError
from shopsearch.retrieval.analysis import contains_cjk
from shopsearch.retrieval.types import Product


@pytest.fixture(scope="module")
def catalog() -> list[Product]:
    return generate_catalog()


@pytest.fixture(scope="module")
def qrels(catalog) -> dict[str, dict[str, int]]:
    return demo_qrels(catalog)


def test_queries_are_many_unique_and_bilingual():
    queries = demo_queries()
    assert len(queries) >= 40
    assert len({q for q, _ in queries}) == len(queries)
    zh = [q for _, q in queries if contains_cjk(q)]
    assert 0.4 <= len(zh) / len(queries) <= 0.6
    # The id prefix names the query language.
    assert all(contains_cjk(text) == qid.startswith("zh") for qid, text in queries)
    for must in (
        "夏季连衣裙",
        "实木双人床",
        "床头柜",
        "蓝牙耳机",
        "不粘锅",
        "儿童玩具",
        "跑步鞋男",
        "king poster bed",
        "summer dress",
        "queen platform bed",
        "cordless drill",
    ):
        assert must in {q for _, q in queries}


def test_rules_only_name_existing_facets():
    # A typo in a rule ("sumer") would silently judge nothing; check every key and value.
    for rule in QUERY_RULES:
        for pattern in rule.grade2 + rule.grade1:
            types = pattern.get("type", tuple(TYPES))
            types = (types,) if isinstance(types, str) else types
            for key, want in pattern.items():
                wants = (want,) if isinstance(want, str) else want
                for w in wants:
                    if key == "type":
                        assert w in TYPES, (rule.qid, w)
                    elif key == "category":
                        assert any(t.category == w for t in TYPES.values()), (rule.qid, w)
                    else:
                        ok = [
                            t
                            for t in types
                            if key in dict(_slots(TYPES[t]))
                            and w in {e[0] for e in VOCAB[dict(_slots(TYPES[t]))[key]]}
                        ]
                        assert ok, (rule.qid, key, w)


def test_every_query_has_at_least_three_grade_two_products(qrels):
    assert set(qrels) == {q for q, _ in demo_queries()}
    for qid, judged in qrels.items():
        assert sum(g == 2 for g in judged.values()) >= 3, qid
        assert set(judged.values()) <= {1, 2}


def test_summer_dress_judgements_follow_attributes(catalog, qrels):
    by_id = {p.id: p for p in catalog}
    for qid in ("zh01", "en02"):
        judged = qrels[qid]
        grade2 = [by_id[i] for i, g in judged.items() if g == 2]
        assert len(grade2) >= 50
        for p in grade2:
            assert p.attributes["type"] in ("连衣裙", "Dress")
            assert p.attributes["season"] in ("夏季", "夏季新款", "Summer")
        for p in (by_id[i] for i, g in judged.items() if g == 1):
            t = p.attributes["type"]
            assert t in ("连衣裙", "Dress") or (
                t in ("半身裙", "Skirt")
                and p.attributes["season"] in ("夏季", "夏季新款", "Summer")
            )
        # Everything unlisted really is not a summer dress, whatever its title says.
        for p in catalog:
            if p.id not in judged:
                f = product_facets(p)
                assert not (f["type"] == "dress" and f["season"] == "summer")
    assert qrels["zh01"] == qrels["en02"]  # same rule, language-independent judgements


def test_king_poster_bed_judgements_follow_attributes(catalog, qrels):
    by_id = {p.id: p for p in catalog}
    judged = qrels["en01"]
    grade2 = [by_id[i] for i, g in judged.items() if g == 2]
    assert len(grade2) >= 5
    for p in grade2:
        assert p.attributes["type"] in ("床", "Bed")
        assert p.attributes["style"] in ("四柱床", "Four-Poster", "Four Poster", "Poster")
        assert p.attributes["size"] in ("1.8m双人床", "1.8米双人床", "King", "King Size")
    # Distractors: a king duvet, a dog bed, flower-bed edging are never judged relevant.
    for i in judged:
        assert product_facets(by_id[i])["type"] == "bed"
    distractors = [
        p
        for p in catalog
        if product_facets(p)["type"] in ("duvet", "pet_bed", "bed_edging", "sheet_set")
    ]
    assert distractors and not any(p.id in judged for p in distractors)


def test_grades_of_hand_written_products():
    products = [
        Product(
            id="A",
            title="夏季碎花雪纺连衣裙",
            attributes={
                "type": "连衣裙",
                "season": "夏季",
                "material": "雪纺",
                "pattern": "碎花",
                "color": "白色",
                "size": "M",
                "length": "中长款",
            },
        ),
        Product(
            id="B",
            title="Winter Silk Dress",
            attributes={
                "type": "Dress",
                "season": "Winter",
                "material": "Silk",
                "pattern": "Solid",
                "color": "Red",
                "size": "S",
                "length": "Maxi",
            },
        ),
        Product(
            id="C",
            title="夏季半身裙",
            attributes={
                "type": "半身裙",
                "season": "夏季",
                "material": "棉",
                "pattern": "纯色",
                "color": "黑色",
                "size": "L",
                "length": "短款",
            },
        ),
        Product(
            id="D",
            title="Solid Wood King Four-Poster Bed",
            attributes={
                "type": "Bed",
                "material": "Solid Wood",
                "style": "Four-Poster",
                "size": "King",
                "color": "Walnut",
            },
        ),
        Product(
            id="E",
            title="Queen Canopy Bed",
            attributes={
                "type": "Bed",
                "material": "Metal",
                "style": "Canopy",
                "size": "Queen",
                "color": "Black",
            },
        ),
        Product(
            id="F",
            title="King Down Duvet",
            attributes={
                "type": "Duvet",
                "filling": "Down",
                "season": "Winter Weight",
                "size": "King",
            },
        ),
    ]
    q = demo_qrels(products)
    assert q["zh01"] == {"A": 2, "B": 1, "C": 1}
    assert q["en03"] == {"B": 2, "A": 1}  # silk dress
    assert q["en01"] == {"D": 2, "E": 1}  # king poster bed; canopy counts as a near miss
    assert q["zh06"] == {"D": 2, "E": 1}  # 实木双人床
    assert q["en11"] == {"F": 2}  # king size duvet
    assert q["zh12"] == {}
    same = demo_qrels(products, same_language=True)
    assert same["zh01"] == {"A": 2, "C": 1} and same["en01"] == {"D": 2, "E": 1}


def test_writers_produce_trec_and_tsv(tmp_path):
    qrels = {"zh01": {"P000010": 2, "P000002": 1}, "en01": {"P000005": 2}}
    path = write_qrels_trec(qrels, tmp_path / "qrels.txt")
    assert path.read_text(encoding="utf-8") == (
        "zh01 0 P000002 1\nzh01 0 P000010 2\nen01 0 P000005 2\n"
    )
    tsv = write_queries_tsv(demo_queries()[:2], tmp_path / "q.tsv")
    assert tsv.read_text(encoding="utf-8") == "zh01\t夏季连衣裙\nzh02\t真丝连衣裙\n"
    with pytest.raises(DataError, match="tabs or newlines"):
        write_queries_tsv([("q1", "bad\tquery")], tmp_path / "bad.tsv")


def test_writers_round_trip_through_ir_measures(catalog, qrels, tmp_path):
    ir_measures = pytest.importorskip("ir_measures")
    path = write_qrels_trec(qrels, tmp_path / "qrels.txt")
    read = {}
    for q in ir_measures.read_trec_qrels(str(path)):
        read.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    assert read == {k: v for k, v in qrels.items() if v}


def test_training_queries_are_judged_by_facets_and_disjoint_from_demo_queries(catalog):
    from shopsearch.demo.queries import training_queries

    queries, qrels = training_queries(catalog, n_queries=200, seed=3)
    assert len(queries) == 200 and set(qrels) == set(queries)
    assert not set(queries.values()) & {text for _, text in demo_queries()}
    assert any(contains_cjk(t) for t in queries.values()) and any(
        not contains_cjk(t) for t in queries.values()
    )
    facets = {p.id: product_facets(p) for p in catalog}
    for qid, judged in qrels.items():
        _, _, type_key, facet1, facet2 = qid.split(":")
        (a1, v1), (a2, v2) = facet1.split("="), facet2.split("=")
        assert judged and {facets[pid]["type"] for pid in judged} == {type_key}
        assert 2 in judged.values()
        for pid, f in facets.items():
            want = (f["type"] == type_key) * ((f.get(a1) == v1) + (f.get(a2) == v2))
            assert judged.get(pid, 0) == want
    # No (type, attribute, value) a demo query asks for is trained on.
    assert not [
        q
        for q in queries
        if ":dress:" in q
        and ("season=summer" in q or "material=silk" in q)
        or ":bed:" in q
        and "style=poster" in q
    ]
    assert training_queries(catalog, n_queries=200, seed=3) == (queries, qrels)
