"""What the service tests share: a calibrated stand-in reranker and a free loopback port."""

import socket

import numpy as np
import pytest


class LengthReranker:
    """Prefers shorter product texts; calibrated, so its sigmoid is served as p(click)."""

    name = "length"
    calibrated = True
    max_length = 32

    def logits(self, query, texts):
        return np.array([-len(t) / 10.0 for t in texts])

    def probabilities(self, logits):
        return 1.0 / (1.0 + np.exp(-np.asarray(logits)))


@pytest.fixture
def length_reranker():
    return LengthReranker()


@pytest.fixture
def free_port():
    """A function that returns a port nothing listens on, on 127.0.0.1."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    return pick
