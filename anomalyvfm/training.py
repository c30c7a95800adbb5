"""Training the LoRA heads: invariance to the synthetic nuisances, without collapse.

Objective (see docs/Training_Objective.md for the reasoning), per step:

    loss = invariance + variance
    invariance = mean over pairs of 1 - cos(heads(synthetic token), heads(clean token))
    variance   = mean over output dims of relu(1 - std(heads(normal tokens)) / std_0)

A pair is a synthetic sample's token and its clean source's token at the same place
(the CLS token, and every patch; for the geometric stage the clean feature grid is
warped with the sample's affine transform and only fully covered patches count).
``std_0`` is each output dimension's spread over normal tokens under the untrained
heads: the variance term keeps different normal tokens as far apart as they started,
so the trivial solution (everything mapped to one point) costs as much as it gains.
The deficit is relative (a fraction of ``std_0``), so both terms lie in [0, 1] and
neither needs a tuned weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.synthetic import SyntheticSample

VARIANCE_BATCH = 1024  # normal tokens per step for the variance term
PATCHES_PER_SAMPLE = 128  # patch pairs drawn per synthetic sample and step (its CLS pair always counts)


@dataclass
class TrainingPairs:
    """Rows of token pairs, ``[M, D]`` each, and the synthetic sample each row belongs to (``[M]``)."""

    synthetic: torch.Tensor
    target: torch.Tensor
    sample_of_row: torch.Tensor


def make_pairs(samples: list[SyntheticSample], synthetic_cls: torch.Tensor, synthetic_patches: list[torch.Tensor],
               source_cls: torch.Tensor, source_patches: list[torch.Tensor]) -> TrainingPairs:
    """Pair each synthetic sample's tokens with its clean source's.

    synthetic_cls: ``[S, D]``; synthetic_patches[i]: ``[gh, gw, D]``; source_cls: ``[N, D]``;
    source_patches[j]: ``[gh, gw, D]`` of training image j.
    """
    synthetic_rows, target_rows, owners = [], [], []
    for index, sample in enumerate(samples):
        patches = synthetic_patches[index].float()
        target = source_patches[sample.source].float()
        if sample.affine is not None:
            grid = target.permute(2, 0, 1)
            target = sample.affine.apply(grid).permute(1, 2, 0)
            covered = sample.affine.apply(torch.ones_like(grid[:1]))[0] > 0.999
            patches, target = patches[covered], target[covered]
        else:
            patches, target = patches.reshape(-1, patches.shape[-1]), target.reshape(-1, target.shape[-1])
        synthetic_rows += [synthetic_cls[index:index + 1].float(), patches]
        target_rows += [source_cls[sample.source:sample.source + 1].float(), target]
        owners.append(torch.full((1 + len(patches),), index))
    return TrainingPairs(torch.cat(synthetic_rows), torch.cat(target_rows), torch.cat(owners))


def train_heads(heads: StackedLoRAHeads, pairs: TrainingPairs, normal_tokens: torch.Tensor, *, epochs: int,
                learning_rate: float, batch_size: int, seed: int, device: torch.device,
                progress: bool = True) -> list[float]:
    """Train the LoRA parameters of ``heads`` with AdamW; returns the mean loss of each epoch.

    An epoch visits every synthetic sample once, ``batch_size`` samples per step.
    normal_tokens: ``[K, D]`` tokens of clean training images for the variance term.
    """
    generator = torch.Generator().manual_seed(seed)
    heads.to(device).train()
    optimizer = torch.optim.AdamW(heads.lora_parameters(), lr=learning_rate)
    with torch.no_grad():
        target_std = heads(_draw(normal_tokens, generator).to(device)).std(0)
    num_samples = int(pairs.sample_of_row.max()) + 1 if len(pairs.sample_of_row) else 0
    rows_of_sample = [torch.nonzero(pairs.sample_of_row == i).flatten() for i in range(num_samples)]
    history = []
    for _ in tqdm(range(epochs), desc="train heads", unit="epoch", leave=False, disable=not progress or None):
        order = torch.randperm(num_samples, generator=generator)
        losses = []
        for start in range(0, num_samples, batch_size):
            rows = torch.cat([_some_rows(rows_of_sample[i], generator) for i in order[start:start + batch_size].tolist()])
            synthetic = heads(pairs.synthetic[rows].to(device))
            target = heads(pairs.target[rows].to(device))
            invariance = (1.0 - (synthetic * target).sum(-1)).mean()
            spread = heads(_draw(normal_tokens, generator).to(device)).std(0)
            variance = torch.relu(1.0 - spread / target_std).mean()
            loss = invariance + variance
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(sum(losses) / max(len(losses), 1))
    heads.eval()
    return history


def _some_rows(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The sample's CLS row (its first) and up to PATCHES_PER_SAMPLE random patch rows.

    Neighbouring patches are nearly redundant, so a random subset per step carries the same
    signal at a fraction of the cost.
    """
    patches = rows[1:]
    if len(patches) > PATCHES_PER_SAMPLE:
        patches = patches[torch.randperm(len(patches), generator=generator)[:PATCHES_PER_SAMPLE]]
    return torch.cat([rows[:1], patches])


def _draw(tokens: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return tokens[torch.randint(len(tokens), (VARIANCE_BATCH,), generator=generator)].float()
