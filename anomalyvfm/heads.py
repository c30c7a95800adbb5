"""The three stacked LoRA heads of AnomalyVFM v1.1 (a plain ``nn.Module``).

``D -> D -> D -> 512``: heads 1 and 2 have the identity as frozen base, head 3 a frozen
projection (see ``projection_base``), with ReLU between heads, then LayerNorm(512)
without affine parameters and L2 normalisation. Each head adds a trainable low-rank
update ``(alpha / rank) * B @ A`` with ``B = 0`` at start, so the untrained heads are
exactly their base maps and only ``A`` and ``B`` ever train.

The layer is written by hand rather than with ``peft``: peft wraps the linear layers of
a pretrained model, whereas these bases are an identity and a data-derived projection,
and fifteen lines keep the mechanism and its file format (plain tensors) in view.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_DIM = 512


class LoRALinear(nn.Module):
    """``y = x @ W.T + (alpha / rank) * (x @ A.T) @ B.T`` with ``W`` frozen. x: ``[..., in]``."""

    def __init__(self, base_weight: torch.Tensor, rank: int, alpha: float) -> None:
        super().__init__()
        out_features, in_features = base_weight.shape
        self.register_buffer("base_weight", base_weight.detach().clone().float())
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as in the LoRA paper and peft
        self.scaling = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base_weight) + self.scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def merged_weight(self) -> torch.Tensor:
        """The effective ``[out, in]`` matrix, base plus the low-rank update."""
        return self.base_weight + self.scaling * self.lora_B @ self.lora_A


class StackedLoRAHeads(nn.Module):
    """Maps backbone tokens ``[..., D]`` to L2-normalised embeddings ``[..., 512]``."""

    def __init__(self, dim: int, projection: torch.Tensor, *, rank: int, alpha: float) -> None:
        super().__init__()
        if projection.shape != (OUTPUT_DIM, dim):
            raise ValueError(f"projection must be [{OUTPUT_DIM}, {dim}], got {list(projection.shape)}")
        identity = torch.eye(dim)
        self.head1 = LoRALinear(identity, rank, alpha)
        self.head2 = LoRALinear(identity, rank, alpha)
        self.head3 = LoRALinear(projection, rank, alpha)
        self.rank, self.alpha = rank, alpha

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(self.head1(tokens))
        hidden = F.relu(self.head2(hidden))
        embedding = F.layer_norm(self.head3(hidden), (OUTPUT_DIM,))
        return F.normalize(embedding, dim=-1)

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if "lora_" in name]

    @torch.no_grad()
    def embed(self, tokens: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
        """``forward`` over ``[N, D]`` tokens in chunks, float32 out, no autograd."""
        weight = self.head1.base_weight
        out = [self(part.to(weight.device, torch.float32)) for part in tokens.split(chunk)]
        return torch.cat(out) if out else tokens.new_zeros((0, OUTPUT_DIM), dtype=torch.float32)


def projection_base(normal_tokens: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """Frozen base of head 3, ``[512, D]``, from the category's normal tokens ``[N, D]``.

    D >= 512: the top-512 principal directions of the normal tokens (after heads 1-2,
    which are the identity and a ReLU at that point): the most varied directions of
    normal data carry what the Gaussian needs. D < 512: a fixed, seeded orthonormal
    embedding of R^D into R^512, which loses nothing.
    """
    if dim >= OUTPUT_DIM:
        centred = F.relu(normal_tokens.double())
        centred = centred - centred.mean(0)
        # Principal directions from the D x D covariance: cheap for any number of tokens.
        eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred)
        return eigenvectors[:, eigenvalues.argsort(descending=True)[:OUTPUT_DIM]].T.float().contiguous()
    generator = np.random.default_rng(seed)
    q, _ = np.linalg.qr(generator.standard_normal((OUTPUT_DIM, dim)))
    return torch.from_numpy(q).float()  # [512, D] with orthonormal columns
