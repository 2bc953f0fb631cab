"""Language-aware text analysis for BM25, identical at index and query time.

- Text is NFKC-normalised (full-width letters and digits become ASCII) and lower-cased.
- Chinese runs go through jieba in *search mode*, which emits a long word and its sub-words
  (连衣裙 -> 连衣, 衣裙, 连衣裙), so a query word matches longer or shorter catalogue words.
- Other runs are split on anything that is not a letter or digit, but letter-digit runs stay
  whole (``iphone15``, ``2x4``, ``xl``) and decimals keep their point (``1.8m``). Purely
  alphabetic English words are Snowball-stemmed (beds -> bed); words with digits are not.
- A short stop-word list per language is removed.

Two options, off by default and recorded in the index manifest (an index keeps the analyser it
was built with; changing one changes the index's terms, so it takes a rebuild):

- ``units``: measures written one way before splitting (``retrieval.units``: ``1/2 in.``,
  ``1/2 inch`` and ``1/2in`` all give ``0.5in``; ``2 x 4`` gives ``2x4``); a measure or
  dimension term is followed by its bare numbers (``36in 36``, ``2x4 2 4``) so that a query
  saying only "36" still matches.
- ``fold_traditional``: traditional Chinese characters folded to simplified before jieba
  (連衣裙 -> 连衣裙), one character for one, from OpenCC's table.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from shopsearch.retrieval.units import measure_numbers, normalise_measures

_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN_RE = re.compile(rf"(?P<cjk>[{_CJK}]+)|(?P<word>[^\W_{_CJK}]+(?:\.\d[^\W_{_CJK}]*)*)")
_ASCII_ALPHA = re.compile(r"^[a-z]+$")

ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be by for from in into is it of on or the to with".split()
)
CHINESE_STOPWORDS = frozenset("的 了 和 与 及 或 是 在 之 其 等 款".split())

ANALYZER_NAME = "shopsearch-zh-jieba-search-en-snowball"
ANALYZER_VERSION = 1


def contains_cjk(text: str) -> bool:
    return re.search(f"[{_CJK}]", text) is not None


def traditional_to_simplified_table() -> dict[int, str]:
    """A ``str.translate`` table folding traditional Chinese characters to simplified: the
    first simplified form of each one-character entry of OpenCC's ``TSCharacters.txt`` (from
    the ``opencc-python-reimplemented`` package), e.g. 連 -> 连, 雙 -> 双."""
    from importlib.resources import files

    table: dict[int, str] = {}
    source = files("opencc") / "dictionary" / "TSCharacters.txt"
    for line in source.read_text(encoding="utf-8").splitlines():
        traditional, _, simplified = line.partition("\t")
        first = simplified.split(" ")[0] if simplified else ""
        if len(traditional) == 1 and len(first) == 1 and first != traditional:
            table[ord(traditional)] = first
    return table


class Analyzer:
    """Turns text into BM25 terms. Stateless apart from lazily loaded jieba and stemmer."""

    def __init__(
        self,
        *,
        stem: bool = True,
        stopwords: bool = True,
        units: bool = False,
        fold_traditional: bool = False,
    ) -> None:
        self.stem = stem
        self.stopwords = stopwords
        self.units = units
        self.fold_traditional = fold_traditional
        self._jieba: Any = None
        self._stemmer: Any = None
        self._t2s: dict[int, str] | None = None

    def config(self) -> dict[str, Any]:
        """What the index manifest records, so query time can refuse a different analyser."""
        return {
            "name": ANALYZER_NAME,
            "version": ANALYZER_VERSION,
            "stem": self.stem,
            "stopwords": self.stopwords,
            "units": self.units,
            "fold_traditional": self.fold_traditional,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Analyzer:
        """The analyser a manifest's record describes (options it lacks are off: an index
        built before they existed was analysed without them)."""
        return cls(
            stem=config.get("stem", True),
            stopwords=config.get("stopwords", True),
            units=bool(config.get("units", False)),
            fold_traditional=bool(config.get("fold_traditional", False)),
        )

    def _cut_chinese(self, run: str) -> list[str]:
        if self._jieba is None:
            import jieba

            # A private Tokenizer keeps jieba's dictionary out of module-global state.
            self._jieba = jieba.Tokenizer()
        return [w for w in self._jieba.cut_for_search(run, HMM=True) if w.strip()]

    def _stem_word(self, word: str) -> str:
        if self._stemmer is None:
            import Stemmer

            # PyStemmer keeps its own word cache, which is what makes stemming cheap here.
            self._stemmer = Stemmer.Stemmer("english")
        return self._stemmer.stemWord(word)

    def tokenize(self, text: str) -> list[str]:
        """Terms of ``text`` in order, duplicates kept (BM25 counts them)."""
        text = unicodedata.normalize("NFKC", text).lower()
        if self.units:
            text = normalise_measures(text)
        if self.fold_traditional and contains_cjk(text):
            if self._t2s is None:
                self._t2s = traditional_to_simplified_table()
            text = text.translate(self._t2s)
        terms: list[str] = []
        for match in _TOKEN_RE.finditer(text):
            if match.group("cjk"):
                words = self._cut_chinese(match.group("cjk"))
                if self.stopwords:
                    words = [w for w in words if w not in CHINESE_STOPWORDS]
                terms.extend(words)
                continue
            word = match.group("word")
            if self.stopwords and word in ENGLISH_STOPWORDS:
                continue
            if self.stem and _ASCII_ALPHA.match(word):
                word = self._stem_word(word)
            terms.append(word)
            if self.units:
                terms.extend(measure_numbers(word))
        return terms

    def tokenize_many(self, texts: list[str]) -> list[list[str]]:
        return [self.tokenize(t) for t in texts]
