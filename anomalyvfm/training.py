"""Training the LoRA heads against the scorer they feed: a margin on the Mahalanobis distance.

Per step (docs/Training_Objective.md has the reasoning):

    mu, Sigma = mean and covariance of the untrained heads' output (the raw tokens) of clean
                normal training tokens, fixed for the whole training (as Deep SAD fixes its centre)
    q(z)      = (z - mu)^T Sigma^-1 (z - mu) / D                              (about 1 for normal tokens)
    loss      = mean over normal synthetic tokens of softplus((log q - log MARGIN) / TEMPERATURE)
              + mean over defect synthetic tokens of softplus((log MARGIN - log q) / TEMPERATURE)

Normal synthetic tokens are the tokens of nuisance variants (lighting, pose, noise) away
from any pasted defect: they should stay inside the Gaussian. Defect tokens are the patches
a pasted defect covers (``synthetic.token_labels``): they should land beyond the margin.
The loss is in the scorer's own units. Shrinking everything towards mu does not win it:
defect tokens would fall inside the margin. No variance floor is needed, and low-variance
directions (where the Gaussian finds anomalies) are free to shrink. A Gaussian re-estimated
from the heads' output at every step was tried first: it chases its own moving target and
the loss rose during training (docs/Training_Objective.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anomalyvfm.heads import StackedLoRAHeads

TOKENS_PER_SAMPLE = 96   # synthetic tokens drawn per sample and step (defect tokens first)
MARGIN = 4.0             # q beyond which a token counts as anomalous (q ~ 1 for normal tokens)
TEMPERATURE = 0.5
SHRINKAGE = 0.01         # covariance shrinkage towards its mean eigenvalue: a stable inverse, thin directions kept


@dataclass
class TrainingTokens:
    """Tokens of the synthetic samples, ``[M, D]``, their labels ``[M]`` (0 normal, 1 defect) and owner sample ``[M]``."""

    tokens: torch.Tensor
    labels: torch.Tensor
    sample_of_row: torch.Tensor


def make_training_tokens(patches: list[torch.Tensor], labels: list[torch.Tensor]) -> TrainingTokens:
    """Flatten each sample's patch grid ``[gh, gw, D]`` with its token labels ``[gh, gw]`` (-1 rows dropped)."""
    rows, row_labels, owners = [], [], []
    for index, (grid, label) in enumerate(zip(patches, labels)):
        keep = label.flatten() >= 0
        rows.append(grid.reshape(-1, grid.shape[-1])[keep].float())
        row_labels.append(label.flatten()[keep])
        owners.append(torch.full((int(keep.sum()),), index))
    return TrainingTokens(torch.cat(rows), torch.cat(row_labels), torch.cat(owners))


def gaussian_of(embedded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[D]`` and precision ``[D, D]`` of ``[N, D]`` embeddings, covariance shrunk by ``SHRINKAGE``."""
    mean = embedded.mean(0)
    centred = embedded - mean
    covariance = centred.T @ centred / max(len(embedded) - 1, 1)
    scale = covariance.diagonal().mean()
    covariance = (1 - SHRINKAGE) * covariance + SHRINKAGE * scale * torch.eye(len(mean), device=mean.device)
    return mean, torch.linalg.inv(covariance)


def normalised_distance(embedded: torch.Tensor, mean: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
    """``q = (z - mu)^T P (z - mu) / D`` for ``[M, D]`` embeddings -> ``[M]``."""
    centred = embedded - mean
    return ((centred @ precision) * centred).sum(-1) / embedded.shape[-1]


def margin_loss(q: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The objective above for distances ``q`` ``[M]`` with labels ``[M]`` (0 normal, 1 defect)."""
    logit = (torch.log(q.clamp_min(1e-8)) - torch.log(torch.tensor(MARGIN))) / TEMPERATURE
    normal, defect = labels == 0, labels == 1
    loss = q.new_zeros(())
    if normal.any():
        loss = loss + F.softplus(logit[normal]).mean()
    if defect.any():
        loss = loss + F.softplus(-logit[defect]).mean()
    return loss


def train_heads(heads: StackedLoRAHeads, training: TrainingTokens, normal_tokens: torch.Tensor, *, epochs: int,
                learning_rate: float, batch_size: int, seed: int, device: torch.device,
                progress: bool = True) -> list[float]:
    """Train the LoRA parameters of ``heads`` with AdamW; returns the mean loss of each epoch.

    An epoch visits every synthetic sample once, ``batch_size`` samples per step.
    normal_tokens: ``[K, D]`` tokens of clean training images, for the fixed Gaussian.
    """
    generator = torch.Generator().manual_seed(seed)
    heads.to(device).train()
    optimizer = torch.optim.AdamW(heads.lora_parameters(), lr=learning_rate)
    num_samples = int(training.sample_of_row.max()) + 1 if len(training.sample_of_row) else 0
    rows_of_sample = [torch.nonzero(training.sample_of_row == i).flatten() for i in range(num_samples)]
    with torch.no_grad():
        mean, precision = gaussian_of(heads(normal_tokens.to(device, torch.float32)))
    history = []
    for _ in tqdm(range(epochs), desc="train heads", unit="epoch", leave=False, disable=not progress or None):
        order = torch.randperm(num_samples, generator=generator)
        losses = []
        for start in range(0, num_samples, batch_size):
            rows = torch.cat([_some_rows(rows_of_sample[i], training.labels, generator)
                              for i in order[start:start + batch_size].tolist()])
            q = normalised_distance(heads(training.tokens[rows].to(device)), mean, precision)
            loss = margin_loss(q, training.labels[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(sum(losses) / max(len(losses), 1))
    heads.eval()
    return history


def _some_rows(rows: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Every defect row of a sample (they are few) and random normal rows up to ``TOKENS_PER_SAMPLE``.

    Neighbouring patches are nearly redundant, so a random subset per step carries the same
    signal at a fraction of the cost.
    """
    defect = rows[labels[rows] == 1][:TOKENS_PER_SAMPLE]
    normal = rows[labels[rows] == 0]
    room = max(TOKENS_PER_SAMPLE - len(defect), TOKENS_PER_SAMPLE // 2)
    if len(normal) > room:
        normal = normal[torch.randperm(len(normal), generator=generator)[:room]]
    return torch.cat([defect, normal])
