"""The three stacked LoRA heads of AnomalyVFM (a plain ``nn.Module``).

``D -> D -> D -> D``: each head is a residual low-rank adapter

    head(x) = x + (alpha / rank) * B @ gelu(A @ x),    A: [rank, D], B: [D, rank], B = 0 at start

so the untrained heads are exactly the identity on the full backbone token: nothing is
dropped (no ReLU or projection on the main path, output dimension = D for ViT-S 384 and
ViT-B 768), and an untrained model scores exactly like a Gaussian on the raw tokens.

Why a GELU inside the low-rank branch: a Mahalanobis distance refitted after any invertible
linear map of the tokens is unchanged (it is affine-invariant), so purely linear heads,
however trained, could not change what the Gaussian scorer sees. The nonlinearity in the
branch is the smallest change that lets training matter; the main path stays linear.
(docs/Heads_and_Scoring.md has the numbers behind this design.)

The layer is written by hand rather than with ``peft``: peft wraps the linear layers of a
pretrained model, whereas these heads sit on top of frozen features, and a few lines keep
the mechanism and its file format (plain tensors) in view.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ResidualLoRA(nn.Module):
    """``y = x + (alpha / rank) * gelu(x @ A.T) @ B.T``; x: ``[..., D]`` -> ``[..., D]``."""

    def __init__(self, dim: int, rank: int, alpha: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, dim))
        self.lora_B = nn.Parameter(torch.zeros(dim, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as in the LoRA paper and peft
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scaling * F.linear(F.gelu(F.linear(x, self.lora_A)), self.lora_B)


class StackedLoRAHeads(nn.Module):
    """Three residual LoRA heads in sequence: backbone tokens ``[..., D]`` -> embeddings ``[..., D]``."""

    def __init__(self, dim: int, *, rank: int, alpha: float) -> None:
        super().__init__()
        self.head1 = ResidualLoRA(dim, rank, alpha)
        self.head2 = ResidualLoRA(dim, rank, alpha)
        self.head3 = ResidualLoRA(dim, rank, alpha)
        self.dim, self.rank, self.alpha = dim, rank, alpha

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head3(self.head2(self.head1(tokens)))

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if "lora_" in name]

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """``forward`` over ``[N, D]`` tokens in chunks, float32 out, no autograd."""
        device = self.head1.lora_A.device
        out = [self(part.to(device, torch.float32)).cpu() for part in tokens.split(chunk)]
        return torch.cat(out) if out else torch.zeros((0, self.dim))
