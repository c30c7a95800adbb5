"""The heads' training objective: restore the regular-light token, keep the content."""

import pytest
import torch
import torch.nn.functional as F

from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.synthetic import SyntheticSample
from anomalyvfm.training import TrainingTokens, cosine_loss, make_training_tokens, train_heads, training_tokens_of

DIM = 16


def _relight(tokens: torch.Tensor) -> torch.Tensor:
    """A 'lighting change' in token space: a nonlinear, token-dependent drift (as exposure moves real tokens)."""
    drift = torch.zeros(DIM)
    drift[:4] = 1.5
    return tokens + drift * torch.sigmoid(2 * tokens[:, :1]) + 0.3 * tokens.roll(1, dims=1)


def _setup(seed=0):
    """Clean normal tokens in a few clusters; synthetic samples whose tokens are relit normal and relit
    defect tokens, with the un-relit tokens as targets. A defect is displaced along directions normal
    tokens never take."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(6, DIM, generator=generator) * 2
    clean = centres[torch.randint(6, (3000,), generator=generator)] + 0.2 * torch.randn(3000, DIM, generator=generator)
    content = centres[torch.randint(6, (90 * 20,), generator=generator)] + 0.2 * torch.randn(90 * 20, DIM, generator=generator)
    labels = torch.zeros(90 * 20, dtype=torch.long)
    labels[::5] = 1
    content[labels == 1, -4:] += 2.5
    training = TrainingTokens(_relight(content), content, labels, torch.arange(90).repeat_interleave(20))
    return clean, content, training


def _knn_distance(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    return 1 - (F.normalize(queries, dim=-1) @ F.normalize(bank, dim=-1).T).max(1).values


def test_cosine_loss_matches_hand_values():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    assert cosine_loss(a[:1], b[:1]).item() == pytest.approx(0.0)
    assert cosine_loss(a, b).item() == pytest.approx((0 + 1 + 2) / 3)


def test_make_training_tokens_flattens_samples_with_their_targets():
    grids = [torch.randn(2, 3, 4), torch.randn(1, 2, 4)]
    targets = [torch.randn(2, 3, 4), torch.randn(1, 2, 4)]
    labels = [torch.tensor([[0, 1, -1], [0, 0, 0]]), torch.tensor([[1, 0]])]
    training = make_training_tokens(grids, targets, labels)
    assert training.tokens.shape == training.targets.shape == (8, 4)
    assert training.labels.tolist() == [0, 1, -1, 0, 0, 0, 1, 0]
    assert training.sample_of_row.tolist() == [0] * 6 + [1] * 2
    torch.testing.assert_close(training.targets[6].float(), targets[1][0, 0].half().float())
    with pytest.raises(ValueError, match="synthetic sample 1"):
        make_training_tokens(grids, [targets[0], torch.randn(2, 2, 4)], labels)


def test_training_tokens_of_encodes_only_what_it_cannot_reuse():
    """Targets: a pose sample is its own target; a defect-free relit sample's is its source's grid (no
    backbone pass); a relit sample with a defect is encoded once more, from its regular-light content."""
    image, other = torch.zeros(3, 28, 28), torch.ones(3, 28, 28)
    mask = torch.zeros(28, 28, dtype=torch.bool)
    mask[:14, :14] = True
    samples = [SyntheticSample(image, torch.zeros(28, 28, dtype=torch.bool), 0, "geometric"),
               SyntheticSample(image, torch.zeros(28, 28, dtype=torch.bool), 1, "photometric", regular=other),
               SyntheticSample(image, mask, 0, "noise", "spot", regular=other * 0.5)]
    encoded = []

    def encode(images):
        encoded.extend(images)
        return [torch.full((2, 2, 3), float(image.mean())) for image in images]

    sources = [torch.full((2, 2, 3), 10.0), torch.full((2, 2, 3), 20.0)]
    training = training_tokens_of(samples, encode, sources, patch_size=14)
    assert len(encoded) == 4 and torch.equal(encoded[3], other * 0.5)
    targets = training.targets.float().reshape(3, 4, 3)[:, 0, 0].tolist()
    assert targets == [0.0, 20.0, 0.5]  # own grid, source 1's grid, the encoded regular content
    assert training.labels.reshape(3, 4)[2].tolist() == [1, 0, 0, 0]
    # in chunks of one sample (bounded memory; a sample's regular-light content goes with it), taken
    # lazily from a generator: the same tokens, targets and labels
    calls, taken = [], []

    def generated():
        for sample in samples:
            taken.append(len(calls))  # encode calls made before this sample was asked for
            yield sample

    chunked = training_tokens_of(generated(), lambda images: calls.append(len(images)) or encode(images), sources,
                                 patch_size=14, chunk=1)
    assert calls == [1, 1, 2] and taken == [0, 1, 2]
    for field in ("tokens", "targets", "labels", "sample_of_row"):
        assert torch.equal(getattr(chunked, field), getattr(training, field)), field


def test_training_restores_relit_tokens_and_keeps_defects_far():
    clean, content, training = _setup()
    heads = StackedLoRAHeads(DIM, rank=8, alpha=16.0)
    normal, defect = training.labels == 0, training.labels == 1
    relit = training.tokens.float()

    def distances() -> tuple[float, float]:
        with torch.no_grad():
            out = _knn_distance(heads(relit), heads(clean))
        return float(out[normal].mean()), float(out[defect].mean())

    normal_before, defect_before = distances()
    losses = train_heads(heads, training, clean, epochs=30, learning_rate=3e-3, batch_size=8, seed=0,
                         device=torch.device("cpu"), progress=False)
    normal_after, defect_after = distances()
    assert losses[-1] < 0.5 * losses[0]
    assert normal_after < 0.5 * normal_before  # relit normal tokens are back among the clean ones
    # Defects stay far: their distance relative to normal tokens' grows (the scorer can tell them apart).
    assert defect_after / normal_after > 2 * defect_before / normal_before, (normal_before, defect_before,
                                                                             normal_after, defect_after)
    with torch.no_grad():  # and a clean token keeps its place
        assert float(F.cosine_similarity(heads(clean), clean, dim=-1).mean()) > 0.99


def test_training_is_reproducible_with_the_same_seed():
    results = []
    for _ in range(2):
        clean, _, training = _setup()
        torch.manual_seed(123)
        heads = StackedLoRAHeads(DIM, rank=4, alpha=8.0)
        train_heads(heads, training, clean, epochs=2, learning_rate=1e-2, batch_size=8, seed=7,
                    device=torch.device("cpu"), progress=False)
        results.append(heads.head1.lora_B.detach().clone())
    assert torch.equal(results[0], results[1])
