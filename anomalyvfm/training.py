"""Training the LoRA heads: undo the lighting and the noise, keep the content.

Both scorers compare a test token with normal tokens seen in regular light (the training
images). Under a lighting change a normal token moves away from them and is flagged; that,
not the scorer, is where every method on frozen features loses most on MVTec AD 2. So the
heads are trained to restore (docs/Training_Objective.md has the reasoning and the numbers):

    restoration = mean over tokens of a synthetic sample of  1 - cos(heads(x), t)
                  x: the sample's token (content under a nuisance), t: the backbone's token of the
                  same content in regular light (``synthetic.SyntheticSample.regular``); for a pose
                  change t is x itself (pose is normal variation)
    identity    = mean over clean normal training tokens c of  1 - cos(heads(c), c)
    loss        = restoration + IDENTITY_WEIGHT * identity

A pasted defect is in x and in t alike: the heads are never shown a defect becoming normal, so
they cannot learn to repair one (which would hide it from the scorer); they learn to undo the
light around it. Clean regular-light tokens keep their place (identity term), so a regular-light
test image is scored as with untrained heads. Cosine, because the default scorer is cosine kNN
and the backbone's LayerNorm-ed tokens have nearly equal norms. Every defect token of a sample
is used at every step (they are few and carry the keep-the-content constraint); the normal ones
are subsampled.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.synthetic import SyntheticSample, token_labels

TOKENS_PER_SAMPLE = 256  # tokens drawn per synthetic sample and step (its defect tokens first)
IDENTITY_WEIGHT = 1.0


@dataclass
class TrainingTokens:
    """Synthetic tokens ``[M, D]``, their regular-light targets ``[M, D]``, labels ``[M]`` (1 defect,
    0 normal, -1 a patch the defect only grazes) and owner sample ``[M]``."""

    tokens: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor
    sample_of_row: torch.Tensor


def make_training_tokens(patches: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                         labels: Sequence[torch.Tensor]) -> TrainingTokens:
    """Flatten each sample's patch grid ``[gh, gw, D]``, its target grid (same shape) and token labels ``[gh, gw]``."""
    if not patches:
        return TrainingTokens(torch.zeros(0, 0), torch.zeros(0, 0), torch.zeros(0, dtype=torch.long),
                              torch.zeros(0, dtype=torch.long))
    for index, (grid, target) in enumerate(zip(patches, targets)):
        if grid.shape != target.shape:
            raise ValueError(f"synthetic sample {index}: tokens {tuple(grid.shape)} but targets {tuple(target.shape)}")
    dim = patches[0].shape[-1]  # float16: the largest tensors of a fit after the training images' grids
    return TrainingTokens(torch.cat([g.reshape(-1, dim).half() for g in patches]),
                          torch.cat([t.reshape(-1, dim).half() for t in targets]),
                          torch.cat([label.flatten() for label in labels]),
                          torch.cat([torch.full((g.shape[0] * g.shape[1],), i) for i, g in enumerate(patches)]))


def training_tokens_of(samples: Iterable[SyntheticSample], encode: Callable[[list[torch.Tensor]], list[torch.Tensor]],
                       source_grids: Sequence[torch.Tensor], patch_size: int, chunk: int = 8) -> TrainingTokens:
    """The training tokens of ``samples``: their own patch grids and their restoration targets.

    ``encode(images)``: patch grids ``[gh, gw, D]`` of images ``[3, h, w]`` (the backbone, with the run's
    input normalisation); ``source_grids[i]``: training image ``i``'s grid, reused as the target of a
    defect-free sample of a restored stage (its content is its source), so only the restored samples
    with a defect need a backbone pass of their own. Samples are taken ``chunk`` at a time: a chunk's
    images and the regular-light contents it needs go to ``encode`` in one call and are then let go,
    so a generator of samples keeps one chunk of images in memory, not all of them.
    """
    own: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    remaining = iter(samples)
    while block := list(itertools.islice(remaining, chunk)):
        encoded_regular = [i for i, s in enumerate(block) if s.regular is not None and s.defect]
        grids = encode([s.image for s in block] + [block[i].regular for i in encoded_regular])
        regular = dict(zip(encoded_regular, grids[len(block):]))
        for i, sample in enumerate(block):
            own.append(grids[i])
            targets.append(grids[i] if sample.regular is None else regular.get(i, source_grids[sample.source]))
            labels.append(token_labels(sample.mask, patch_size))
    return make_training_tokens(own, targets, labels)


def cosine_loss(embedded: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between rows of ``[M, D]`` tensors (0 when they point the same way)."""
    return (1.0 - F.cosine_similarity(embedded, targets, dim=-1)).mean()


def train_heads(heads: StackedLoRAHeads, training: TrainingTokens, clean_tokens: torch.Tensor, *, epochs: int,
                learning_rate: float, batch_size: int, seed: int, device: torch.device,
                progress: bool = True) -> list[float]:
    """Train the LoRA parameters of ``heads`` with AdamW; returns the mean loss of each epoch.

    An epoch visits every synthetic sample once, ``batch_size`` samples per step.
    clean_tokens: ``[K, D]`` tokens of clean training images, for the identity term.
    """
    generator = torch.Generator().manual_seed(seed)
    heads.to(device).train()
    optimizer = torch.optim.AdamW(heads.lora_parameters(), lr=learning_rate)
    num_samples = int(training.sample_of_row.max()) + 1 if len(training.sample_of_row) else 0
    rows_of_sample = [torch.nonzero(training.sample_of_row == i).flatten() for i in range(num_samples)]
    history = []
    for _ in tqdm(range(epochs), desc="train heads", unit="epoch", leave=False, disable=not progress or None):
        order = torch.randperm(num_samples, generator=generator)
        losses = []
        for start in range(0, num_samples, batch_size):
            rows = torch.cat([_some_rows(rows_of_sample[i], training.labels, generator)
                              for i in order[start:start + batch_size].tolist()])
            clean = clean_tokens[torch.randint(len(clean_tokens), (len(rows),), generator=generator)].to(device)
            loss = cosine_loss(heads(training.tokens[rows].to(device, torch.float32)),
                               training.targets[rows].to(device, torch.float32))
            loss = loss + IDENTITY_WEIGHT * cosine_loss(heads(clean.float()), clean.float())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        history.append(sum(losses) / max(len(losses), 1))
    heads.eval()
    return history


def _some_rows(rows: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Every defect row of a sample (up to ``TOKENS_PER_SAMPLE``) and random other rows up to that count.

    Neighbouring patches are nearly redundant, so a random subset per step carries the same
    signal at a fraction of the cost.
    """
    defect = rows[labels[rows] == 1][:TOKENS_PER_SAMPLE]
    other = rows[labels[rows] != 1]
    room = max(TOKENS_PER_SAMPLE - len(defect), TOKENS_PER_SAMPLE // 2)
    if len(other) > room:
        other = other[torch.randperm(len(other), generator=generator)[:room]]
    return torch.cat([defect, other])
