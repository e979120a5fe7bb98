"""Rand (Table 2): as many *randomly chosen* input tokens as there are vision tokens leave at K, drawn
among every token of the prompt, text included, as the authors' code draws them, seeded per row. Where
the last prompt token is drawn, the next token is predicted from the last kept one (the authors' code
shortens the sequence, so its last hidden state is the last kept token's): ``fill = "last_kept"``."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from . import Policy, Tokens


class Rand(Policy):
    name = "rand"
    fill = "last_kept"

    def __init__(self, k: int, seeds: Sequence[int]):
        super().__init__(k)
        self.seeds = list(seeds)
        self.dropped: list[torch.Tensor] = []  # per prefill call: the drop mask [B, q] (for tests, records)

    def select(self, tokens: Tokens) -> torch.Tensor:
        vision = tokens.vision
        if not bool(vision.any()):
            return vision  # decode steps, text-only calls: nothing to draw
        b = vision.shape[0]
        if len(self.seeds) != b:
            raise ValueError(f"rand: {len(self.seeds)} seeds for a batch of {b} rows")
        valid = tokens.valid.to(vision.device)  # padding is never drawn
        drop = torch.zeros_like(vision)
        for row in range(b):
            n = int(vision[row].sum())
            candidates = valid[row].nonzero().squeeze(1).tolist()
            drop[row, random.Random(self.seeds[row]).sample(candidates, min(n, len(candidates)))] = True
        self.dropped.append(drop.cpu())
        return drop
