"""shopsearch: product search for e-commerce (BM25 + dense + fusion + click-probability rerank)."""

from __future__ import annotations

__version__ = "0.1.0"
