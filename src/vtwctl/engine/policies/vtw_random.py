"""VTW†: VTW at a random layer per sample, K = Random[K-8, K+8] (Table 2), drawn from a seed and the
sample's id, so a run is reproducible and a resume draws the same K. Rows of one forward call share a
layer, so a caller draws per sample (``for_sample``) and runs each drawn K as VTW."""

from __future__ import annotations

import hashlib
import random

from .vtw import VTW

RANDOM_K_SPAN = 8  # Table 2: VTW† at Random[8, 24] around K = 16 (7B), Random[12, 28] around K = 20 (13B)


def sample_seed(seed: int, sample_id: str) -> int:
    """A per-sample seed: the same sample gets the same draw in every run, batch and shard."""
    return int(hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest(), 16) % 2**31


def random_k(seed: int, sample_id: str, k: int, num_layers: int, span: int = RANDOM_K_SPAN) -> int:
    """VTW†'s layer for one sample: uniform in [k - span, k + span] (inclusive, clipped to 0..N)."""
    lo, hi = max(0, k - span), min(num_layers, k + span)
    return random.Random(sample_seed(seed, sample_id)).randint(lo, hi)


class VTWRandom(VTW):
    """VTW at the layer drawn for each sample around ``k`` (as a forward call's policy: VTW at ``k``)."""

    name = "vtw-random"

    def __init__(self, k: int, seed: int = 0):
        super().__init__(k)
        self.seed = seed

    def for_sample(self, sample_id: str, num_layers: int) -> VTW:
        return VTW(random_k(self.seed, sample_id, self.k, num_layers))
