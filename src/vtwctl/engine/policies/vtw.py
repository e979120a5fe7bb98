"""VTW: every vision token leaves at layer K (Lin et al., AAAI 2025)."""

from __future__ import annotations

import torch

from . import Policy, Tokens


class VTW(Policy):
    name = "vtw"

    def select(self, tokens: Tokens) -> torch.Tensor:
        return tokens.vision
