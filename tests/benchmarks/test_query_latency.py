"""The latency benchmark's variant syntax and its refusals."""

from __future__ import annotations

import pytest

from shopsearch.benchmarks.query_latency import parse_variant


def test_variant_keys_parse():
    v = parse_variant("fast=encoder=onnx,reranker=/tmp/r,top=20,threads=2,weight=0.5")
    assert (v.name, v.encoder, v.reranker, v.top, v.threads) == ("fast", "onnx", "/tmp/r", 20, 2)
    assert v.weight == 0.5
    plain = parse_variant("served")
    assert (plain.encoder, plain.reranker, plain.top, plain.threads) == (None, "index", None, 1)


@pytest.mark.parametrize(
    "text", ["=encoder=onnx", "x=runtime=onnx", "x=top=0", "x=threads=two", "x=weight=2"]
)
def test_bad_variants_are_refused(text):
    with pytest.raises(ValueError, match="variant"):
        parse_variant(text)
