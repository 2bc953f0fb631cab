"""Numbers, sizes and units written one way, so that "1/2 inch", "1/2 in." and "1/2in" meet.

Catalogues and shoppers write the same measure many ways: ``36 in.``, ``36-inch``, ``36"``,
``36in``; ``2 x 4`` and ``2x4``; ``1-1/2 in.`` and ``1.5 in``; ``5 lb`` and ``5 pounds``. The
analyser's ``units`` option (off by default, recorded in the index manifest) runs
:func:`normalise_measures` on lower-cased NFKC text before splitting it into terms, at index
time and query time alike:

- fractions become decimals: ``1/2`` -> ``0.5``, ``1-1/2`` and ``1 1/2`` -> ``1.5``;
- a number followed by a unit word (with or without a space or hyphen) becomes one term, the
  number and the unit's canonical name: ``36 in.`` / ``36-inch`` / ``36"`` -> ``36in``,
  ``8 ft.`` / ``8 feet`` / ``8'`` -> ``8ft``, ``5 pounds`` -> ``5lb``, ``1.9 cu. ft.`` ->
  ``1.9cuft``;
- dimensions lose their spaces: ``2 x 4`` / ``2 X 4`` / ``2×4`` -> ``2x4``.

:func:`measure_terms` lists the canonical measures of a text (what the learning-to-rank
features compare between a query and a title). Pure functions, no state.
"""

from __future__ import annotations

import re
from fractions import Fraction

# canonical unit -> the ways it is written (lower case; longest first matters only for
# alternatives that are prefixes of each other, which the regex below sorts out).
UNITS: dict[str, tuple[str, ...]] = {
    "sqft": (
        "sq. ft.",
        "sq. ft",
        "sq ft.",
        "sq ft",
        "sq.ft.",
        "sqft",
        "square feet",
        "square foot",
    ),
    "cuft": ("cu. ft.", "cu. ft", "cu ft.", "cu ft", "cu.ft.", "cuft", "cubic feet", "cubic foot"),
    "floz": ("fl. oz.", "fl. oz", "fl oz.", "fl oz", "floz", "fluid ounces", "fluid ounce"),
    "in": ("inches", "inch", "in.", "in", '"', "\u201d", "''"),
    "ft": ("feet", "foot", "ft.", "ft", "'", "\u2019"),
    "yd": ("yards", "yard", "yd.", "yd"),
    "mm": ("millimeters", "millimetres", "millimeter", "millimetre", "mm"),
    "cm": ("centimeters", "centimetres", "centimeter", "centimetre", "cm"),
    "m": ("meters", "metres", "meter", "metre"),
    "lb": ("pounds", "pound", "lbs.", "lbs", "lb.", "lb"),
    "oz": ("ounces", "ounce", "oz.", "oz"),
    "gal": ("gallons", "gallon", "gal.", "gal"),
    "qt": ("quarts", "quart", "qt.", "qt"),
    "v": ("volts", "volt", "v"),
    "w": ("watts", "watt", "w"),
    "amp": ("amps", "amp", "amperes", "ampere"),
    "hp": ("horsepower", "hp"),
    "btu": ("btus", "btu"),
    "gpm": ("gpm",),
    "psi": ("psi",),
    "gauge": ("gauge", "ga."),
    "pk": ("packs", "pack", "pk."),
    "pc": ("pieces", "piece", "pcs.", "pcs", "pc."),
}
_CANONICAL = {variant: unit for unit, variants in UNITS.items() for variant in variants}
_VARIANTS = sorted(_CANONICAL, key=len, reverse=True)
_UNIT_ALT = "|".join(re.escape(v) for v in _VARIANTS)

_NUMBER = r"\d+(?:\.\d+)?"
# A mixed number (1-1/2, 1 1/2) or a plain fraction (3/4), not inside a longer run of digits.
_MIXED = re.compile(r"(?<![\w./])(\d+)[- ](\d+)/(\d+)(?![\d./])")
_FRACTION = re.compile(r"(?<![\w./])(\d+)/(\d+)(?![\d./])")
# "2 x 4", "2X4", "2×4", "2 * 4": dimensions, after fractions have become decimals.
_DIMENSION = re.compile(rf"(?<![\w.])({_NUMBER})\s*[x×*]\s*(?={_NUMBER}(?![\w.]*/))")
# A number, an optional space or hyphen, a unit; the unit must not run on into a word (so
# "2 inches" is a measure but "4 input" is not). Quotes and apostrophes need no boundary.
_MEASURE = re.compile(
    rf"(?<![\w.])({_NUMBER})[ \-]?({_UNIT_ALT})(?:(?<=[\"'\u201d\u2019.])|(?![\w]))"
)
_CANONICAL_TERM = re.compile(rf"^({_NUMBER})({'|'.join(sorted(UNITS, key=len, reverse=True))})$")


def _decimal(value: Fraction) -> str:
    """``Fraction(3, 4)`` -> ``"0.75"``; at most four decimals, no trailing zeros."""
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text or "0"


def _number(text: str) -> str:
    """A number written canonically: ``"36.0"`` -> ``"36"``, ``"0.50"`` -> ``"0.5"``."""
    return _decimal(Fraction(text)) if "." in text else str(int(text))


def normalise_measures(text: str) -> str:
    """``text`` (lower-cased) with fractions, measures and dimensions written canonically;
    idempotent: ``normalise_measures(normalise_measures(t)) == normalise_measures(t)``."""

    def mixed(match: re.Match[str]) -> str:
        whole, num, den = (int(g) for g in match.groups())
        if den == 0:
            return match.group(0)
        return _decimal(whole + Fraction(num, den))

    def fraction(match: re.Match[str]) -> str:
        num, den = (int(g) for g in match.groups())
        return match.group(0) if den == 0 else _decimal(Fraction(num, den))

    text = _MIXED.sub(mixed, text)
    text = _FRACTION.sub(fraction, text)
    text = _DIMENSION.sub(lambda m: f"{_number(m.group(1))}x", text)
    return _MEASURE.sub(lambda m: f"{_number(m.group(1))}{_CANONICAL[m.group(2)]} ", text)


def split_measure(term: str) -> tuple[str, str] | None:
    """``"36in"`` -> ``("36", "in")``; ``None`` for a term that is not a canonical measure."""
    match = _CANONICAL_TERM.match(term)
    return (match.group(1), match.group(2)) if match else None


_DIMENSION_TERM = re.compile(rf"^{_NUMBER}(?:x{_NUMBER})+$")


def measure_numbers(term: str) -> list[str]:
    """The bare numbers a measure or dimension term also stands for, so that a query that
    names a measure one way still matches a title that names it another: ``"36in"`` ->
    ``["36"]``, ``"2x4"`` -> ``["2", "4"]``; ``[]`` for any other term."""
    measure = split_measure(term)
    if measure is not None:
        return [measure[0]]
    if _DIMENSION_TERM.match(term):
        return term.split("x")
    return []


def measure_terms(text: str) -> set[str]:
    """The canonical measures and dimensions in ``text`` (any case):
    ``"Pine 2 X 4, 8 ft."`` -> ``{"2x4", "8ft"}``."""
    normal = normalise_measures(text.lower())
    found = set()
    for word in re.findall(r"[a-z0-9.x]+", normal):
        word = word.rstrip(".")
        if split_measure(word) or _DIMENSION_TERM.match(word):
            found.add(word)
    return found
