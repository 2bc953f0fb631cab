"""Demo queries over the synthetic catalogue and their graded judgements (TREC style).

Judgements come from the generator's structured facets (:func:`product_facets`), never from
title text, so a ranking can be scored against them honestly. Grades: 2 = exactly what the
query asks for, 1 = a near miss a shopper might still click (same kind of product with one
requirement missed, or a close substitute), 0 = everything else (left out of the qrels, as
usual in TREC). Judgements are language-independent by default: a Chinese summer dress is as
relevant to "summer dress" as an English one; ``same_language=True`` keeps only products in the
query's language.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from shopsearch.demo.catalog import TYPES, VOCAB, _slots, _surfaces, product_facets
from shopsearch.errors import DataError
from shopsearch.retrieval.types import Product

# A pattern matches a product when every key equals the product's canonical facet, or is one of
# the values when given a tuple. A grade applies when any of its patterns matches; grade 2 wins
# over grade 1.
Pattern = dict[str, "str | tuple[str, ...]"]


class QueryRule(NamedTuple):
    qid: str
    query: str
    grade2: tuple[Pattern, ...]
    grade1: tuple[Pattern, ...] = ()


def _p(type_: str | tuple[str, ...] | None = None, **facets: str | tuple[str, ...]) -> Pattern:
    return ({"type": type_} if type_ is not None else {}) | facets


_DOUBLE = ("queen", "king")  # 双人床: 1.5 m and 1.8 m beds
_WATCH = ("mechanical_watch", "quartz_watch")

QUERY_RULES: tuple[QueryRule, ...] = (
    # ---- Chinese
    QueryRule(
        "zh01",
        "夏季连衣裙",
        (_p("dress", season="summer"),),
        (_p("dress"), _p("skirt", season="summer")),
    ),
    QueryRule("zh02", "真丝连衣裙", (_p("dress", material="silk"),), (_p("dress"),)),
    QueryRule(
        "zh03",
        "碎花连衣裙",
        (_p("dress", pattern="floral"),),
        (_p("dress"), _p("skirt", pattern="floral")),
    ),
    QueryRule("zh04", "秋冬连衣裙", (_p("dress", season="autumn_winter"),), (_p("dress"),)),
    QueryRule(
        "zh05",
        "长款雪纺连衣裙",
        (_p("dress", material="chiffon", length="maxi"),),
        (_p("dress", material="chiffon"), _p("dress", length="maxi")),
    ),
    QueryRule(
        "zh06",
        "实木双人床",
        (_p("bed", material="solid_wood", size=_DOUBLE),),
        (_p("bed"), _p("bed_frame", size=_DOUBLE)),
    ),
    QueryRule("zh07", "四柱床", (_p("bed", style="poster"),), (_p("bed", style="canopy"),)),
    QueryRule("zh08", "床头柜", (_p("nightstand"),), (_p("dresser"),)),
    QueryRule("zh09", "五斗柜", (_p("dresser", drawers="5"),), (_p("dresser"),)),
    QueryRule(
        "zh10", "乳胶床垫", (_p("mattress", material=("latex", "hybrid")),), (_p("mattress"),)
    ),
    QueryRule("zh11", "羽绒被", (_p("duvet", filling="down"),), (_p("duvet"),)),
    QueryRule("zh12", "蓝牙耳机", (_p("earbuds"),), (_p("headphones"),)),
    QueryRule(
        "zh13", "iPhone15 手机壳", (_p("phone_case", model="iphone15"),), (_p("phone_case"),)
    ),
    QueryRule("zh14", "游戏笔记本电脑", (_p("laptop", use="gaming"),), (_p("laptop"),)),
    QueryRule(
        "zh15",
        "不粘锅",
        (_p(("frying_pan", "wok"), coating="nonstick"),),
        (_p(("frying_pan", "wok")),),
    ),
    QueryRule("zh16", "空气炸锅", (_p("air_fryer"),)),
    QueryRule("zh17", "电饭煲", (_p("rice_cooker"),)),
    QueryRule("zh18", "跑步鞋男", (_p("running_shoes"),), (_p("sneakers"), _p("running_shorts"))),
    QueryRule("zh19", "儿童玩具", (_p(category="toys"),), (_p("picture_book"),)),
    QueryRule("zh20", "防晒霜", (_p("sunscreen"),)),
    QueryRule("zh21", "露营帐篷", (_p("tent"),), (_p("sleeping_bag"),)),
    QueryRule(
        "zh22",
        "锂电电钻",
        (_p("drill", power="cordless"),),
        (_p("drill"), _p("impact_driver", power="cordless")),
    ),
    QueryRule("zh23", "狗窝", (_p("pet_bed", pet="dog"),), (_p("pet_bed"),)),
    QueryRule("zh24", "双肩包", (_p("backpack"),), (_p("hiking_backpack"),)),
    QueryRule("zh25", "智能手表", (_p("smartwatch"),), (_p(_WATCH),)),
    QueryRule("zh26", "坚果零食", (_p("nuts"),), (_p(category="snacks"),)),
    QueryRule(
        "zh27",
        "护眼台灯",
        (_p("desk_lamp", feature="led_eye"),),
        (_p("desk_lamp"), _p("bedside_lamp", feature="led_eye")),
    ),
    # ---- English
    QueryRule(
        "en01",
        "king poster bed",
        (_p("bed", size="king", style="poster"),),
        (_p("bed", size="king"), _p("bed", style=("poster", "canopy"))),
    ),
    QueryRule(
        "en02",
        "summer dress",
        (_p("dress", season="summer"),),
        (_p("dress"), _p("skirt", season="summer")),
    ),
    QueryRule("en03", "silk dress", (_p("dress", material="silk"),), (_p("dress"),)),
    QueryRule(
        "en04",
        "linen maxi dress",
        (_p("dress", material="linen", length="maxi"),),
        (_p("dress", material="linen"), _p("dress", length="maxi")),
    ),
    QueryRule(
        "en05",
        "floral midi dress",
        (_p("dress", pattern="floral", length="midi"),),
        (_p("dress", pattern="floral"), _p("dress", length="midi")),
    ),
    QueryRule(
        "en06",
        "queen platform bed",
        (_p("bed", size="queen", style="platform"),),
        (_p("bed", size="queen"), _p("bed", style="platform"), _p("bed_frame", size="queen")),
    ),
    QueryRule("en07", "canopy bed", (_p("bed", style="canopy"),), (_p("bed", style="poster"),)),
    QueryRule(
        "en08",
        "nightstand with drawers",
        (_p("nightstand", storage=("two_drawers", "one_drawer")),),
        (_p("nightstand"), _p("dresser")),
    ),
    QueryRule(
        "en09", "solid wood dresser", (_p("dresser", material="solid_wood"),), (_p("dresser"),)
    ),
    QueryRule(
        "en10", "memory foam mattress", (_p("mattress", material="memory_foam"),), (_p("mattress"),)
    ),
    QueryRule("en11", "king size duvet", (_p("duvet", size="king"),), (_p("duvet"),)),
    QueryRule("en12", "wireless earbuds", (_p("earbuds"),), (_p("headphones"),)),
    QueryRule("en13", "iphone 15 case", (_p("phone_case", model="iphone15"),), (_p("phone_case"),)),
    QueryRule("en14", "gaming laptop", (_p("laptop", use="gaming"),), (_p("laptop"),)),
    QueryRule(
        "en15",
        "non-stick frying pan",
        (_p("frying_pan", coating="nonstick"),),
        (_p("frying_pan"), _p("wok", coating="nonstick")),
    ),
    QueryRule("en16", "air fryer", (_p("air_fryer"),)),
    QueryRule("en17", "mens running shoes", (_p("running_shoes"),), (_p("sneakers"),)),
    QueryRule("en18", "yoga pants", (_p("yoga_pants"),)),
    QueryRule("en19", "sunscreen spf 50", (_p("sunscreen", spf="spf50"),), (_p("sunscreen"),)),
    QueryRule("en20", "4 person camping tent", (_p("tent", capacity="4"),), (_p("tent"),)),
    QueryRule(
        "en21",
        "cordless drill",
        (_p("drill", power="cordless"),),
        (_p("drill"), _p("impact_driver", power="cordless")),
    ),
    QueryRule("en22", "dog bed", (_p("pet_bed", pet="dog"),), (_p("pet_bed"),)),
    QueryRule("en23", "led desk lamp", (_p("desk_lamp"),), (_p(("bedside_lamp", "floor_lamp")),)),
    QueryRule(
        "en24",
        "leather backpack",
        (_p("backpack", material="leather"),),
        (_p("backpack"), _p("hiking_backpack")),
    ),
    QueryRule("en25", "smart watch", (_p("smartwatch"),), (_p(_WATCH),)),
    QueryRule("en26", "dark chocolate", (_p("chocolate", cocoa="dark"),), (_p("chocolate"),)),
    QueryRule("en27", "building blocks for kids", (_p("building_blocks"),), (_p(category="toys"),)),
)


def demo_queries() -> list[tuple[str, str]]:
    """``[(query_id, query), ...]`` in table order: Chinese (``zh..``), then English (``en..``)."""
    return [(r.qid, r.query) for r in QUERY_RULES]


def query_language(qid: str) -> str:
    """``"zh"`` or ``"en"``: the demo query ids carry their language as a prefix."""
    return qid[:2]


def _matches(pattern: Pattern, facets: dict[str, str]) -> bool:
    for key, want in pattern.items():
        have = facets.get(key)
        if have is None or (have not in want if isinstance(want, tuple) else have != want):
            return False
    return True


def grade(rule: QueryRule, facets: dict[str, str]) -> int:
    """The grade (0, 1 or 2) of a product with these canonical facets for this query."""
    if any(_matches(p, facets) for p in rule.grade2):
        return 2
    if any(_matches(p, facets) for p in rule.grade1):
        return 1
    return 0


def demo_qrels(
    products: list[Product], *, same_language: bool = False
) -> dict[str, dict[str, int]]:
    """Graded judgements ``{query_id: {product_id: grade}}`` for every demo query.

    Only grades 1 and 2 are listed (unlisted = 0); a query with no relevant product maps to an
    empty dict. ``products`` must be demo products (see :func:`product_facets`); with
    ``same_language=True`` a product counts only when its language is the query's.
    """
    facets = [(p.id, product_facets(p)) for p in products]
    qrels: dict[str, dict[str, int]] = {}
    for rule in QUERY_RULES:
        lang = query_language(rule.qid)
        judged = {}
        for pid, f in facets:
            if same_language and f["lang"] != lang:
                continue
            g = grade(rule, f)
            if g:
                judged[pid] = g
        qrels[rule.qid] = judged
    return qrels


def write_queries_tsv(queries: list[tuple[str, str]], path: str | Path) -> Path:
    """Write ``query_id<TAB>query`` lines (UTF-8)."""
    path = Path(path)
    lines = []
    for i, (qid, text) in enumerate(queries, start=1):
        if any(c in qid + text for c in "\t\r\n"):
            raise DataError("query id and text may not contain tabs or newlines", line=i)
        lines.append(f"{qid}\t{text}\n")
    path.write_text("".join(lines), encoding="utf-8", newline="\n")
    return path


def write_qrels_trec(qrels: dict[str, dict[str, int]], path: str | Path) -> Path:
    """Write TREC qrels ``query_id 0 product_id grade``, queries in the given order, products
    sorted by id, so the file is deterministic."""
    path = Path(path)
    lines = []
    for qid, judged in qrels.items():
        for pid in sorted(judged):
            if any(c.isspace() for c in qid + pid):
                raise DataError(f"ids may not contain whitespace: {qid!r} {pid!r}")
            lines.append(f"{qid} 0 {pid} {int(judged[pid])}\n")
    path.write_text("".join(lines), encoding="utf-8", newline="\n")
    return path


def _held_out_facets() -> set[tuple[str, str, str]]:
    """(type, attribute, value) triples that a hand-written demo query asks for."""
    held = set()
    for rule in QUERY_RULES:
        for pattern in rule.grade2:
            types = pattern.get("type", ())
            for type_key in (types,) if isinstance(types, str) else types:
                for attr, want in pattern.items():
                    for value in (want,) if isinstance(want, str) else want:
                        if attr != "type":
                            held.add((type_key, attr, value))
    return held


def training_queries(
    products: list[Product], *, n_queries: int = 300, seed: int = 0
) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """Generated two-facet training queries ("白色尼龙双肩包", "walnut rattan nightstand") with
    facet judgements, disjoint from the hand-written demo queries.

    Why: 54 queries are too few to fine-tune a cross-encoder on, and training on them would
    leave nothing honest to evaluate it on. Two facets, because then a ranking's top 10 mixes
    exact matches with near misses, so simulated clicks say something about order (with one
    facet the top 10 are nearly all exact matches and clicks teach little). Each query is a
    product type with values of two of its attributes, in Chinese or English; products of that
    type are judged by their facets: grade 2 = both values, 1 = one of them, unlisted (0) =
    neither. No (type, attribute, value) that a demo query asks for is used, so the demo
    queries stay unseen. Returns ``(queries, qrels)``: ``n_queries`` (or all, if fewer
    exist) seeded picks, query ids ``gen:<lang>:<type>:<attr>=<value>:<attr>=<value>``.
    """
    import itertools
    import random

    held = _held_out_facets()
    rng = random.Random(seed)
    by_type: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for product in products:
        facets = product_facets(product)
        by_type.setdefault(facets["type"], []).append((product.id, facets))
    candidates = []
    for type_key, spec in TYPES.items():
        members = by_type.get(type_key, [])
        entries = {attr: {e[0]: e for e in VOCAB[vocab]} for attr, vocab in _slots(spec)}
        usable = [attr for attr in entries if len({facets.get(attr) for _, facets in members}) >= 2]
        for a1, a2 in itertools.combinations(usable, 2):
            seen = {(f[a1], f[a2]) for _, f in members}  # only combinations that exist
            for v1, v2 in sorted(seen):
                if (type_key, a1, v1) in held or (type_key, a2, v2) in held:
                    continue
                for lang in ("zh", "en"):
                    candidates.append((type_key, a1, entries[a1][v1], a2, entries[a2][v2], lang))
    picked = rng.sample(candidates, min(n_queries, len(candidates)))
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for type_key, a1, e1, a2, e2, lang in sorted(
        picked, key=lambda c: (c[0], c[1], c[2][0], c[3], c[4][0], c[5])
    ):
        spec = TYPES[type_key]
        col = 1 if lang == "zh" else 2
        v1, v2 = (rng.choice(_surfaces(e[col])) for e in (e1, e2))
        qid = f"gen:{lang}:{type_key}:{a1}={e1[0]}:{a2}={e2[0]}"
        queries[qid] = (
            f"{v1}{v2}{spec.zh_name}" if lang == "zh" else f"{v1} {v2} {spec.en_name}".lower()
        )
        judged = {pid: (f[a1] == e1[0]) + (f[a2] == e2[0]) for pid, f in by_type[type_key]}
        qrels[qid] = {pid: g for pid, g in judged.items() if g}
    return queries, qrels
