from shopsearch.retrieval.analysis import Analyzer


def test_chinese_search_mode_emits_sub_words():
    terms = Analyzer().tokenize("夏季连衣裙")
    assert "连衣裙" in terms and "衣裙" in terms and "夏季" in terms


def test_english_is_lowercased_stemmed_and_stopworded():
    assert Analyzer().tokenize("Beds for the King") == ["bed", "king"]


def test_model_numbers_and_sizes_stay_whole():
    terms = Analyzer().tokenize("iPhone15 手机壳 2x4 1.8m XL")
    for kept in ("iphone15", "2x4", "1.8m", "xl"):
        assert kept in terms


def test_full_width_text_is_normalised():
    assert Analyzer().tokenize("ＸＬ ｉＰｈｏｎｅ１５") == ["xl", "iphone15"]


def test_emoji_and_mixed_scripts_do_not_crash():
    terms = Analyzer().tokenize("😀 summer 连衣裙 Кровать 🛏️")
    assert "summer" in terms and "连衣裙" in terms and "кровать" in terms


def test_empty_and_punctuation_only_give_no_terms():
    assert Analyzer().tokenize("") == []
    assert Analyzer().tokenize(" ,.!? 。，") == []


def test_same_analysis_without_stemming_when_configured():
    assert Analyzer(stem=False).tokenize("Beds") == ["beds"]
