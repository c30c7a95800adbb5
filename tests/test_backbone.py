"""Preprocessing, the frozen feature extractor and backbone loading errors."""

import socket

import numpy as np
import pytest
import torch

from anomalyvfm.backbone import (BackboneError, FeatureExtractor, _SameSizeBatches, hub_reachable, load_backbone,
                                 normalize, target_size, to_input)
from tests.conftest import make_tiny_dinov2


@pytest.mark.parametrize("height, width, expected", [
    (1056, 4224, (224, 896)),   # sheet_metal, 4:1 kept
    (2048, 2448, (224, 266)),   # fabric: 267.75 -> nearest multiple of 14
    (300, 300, (224, 224)),
    (403, 222, (406, 224)),     # portrait
])
def test_target_size_keeps_aspect_and_patch_multiples(height, width, expected):
    assert target_size(height, width, 224, 14) == expected


def test_to_input_resizes_to_range_zero_one():
    image = np.full((100, 200, 3), 255, np.uint8)
    image[:, :100] = 0
    tensor = to_input(image, (56, 112))
    assert tensor.shape == (3, 56, 112) and tensor.dtype == torch.float32
    assert tensor[:, :, :50].max() == 0.0 and tensor[:, :, 60:].min() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("shape, size", [((300, 410, 3), (112, 154)), ((20, 36, 3), (56, 98))])
def test_to_input_resizing_uint8_stays_within_a_grey_level_of_resizing_floats(shape, size):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    floats = torch.from_numpy(image).permute(2, 0, 1).float().div(255.0)[None]
    expected = torch.nn.functional.interpolate(floats, size=size, mode="bilinear", antialias=True,
                                               align_corners=False)[0].clamp(0, 1)
    result = to_input(image, size)
    assert result.is_contiguous() and (result - expected).abs().max() <= 1.01 / 255


def test_normalize_uses_imagenet_statistics():
    out = normalize(torch.full((1, 3, 2, 2), 0.485))
    assert out[0, 0].abs().max() < 1e-6 and out[0, 1, 0, 0] == pytest.approx((0.485 - 0.456) / 0.224)


def test_same_size_batches_never_mix_sizes():
    sizes = [(14, 28), (28, 14), (14, 28), (14, 28), (28, 14)]
    batches = list(_SameSizeBatches(sizes, batch_size=2))
    assert sorted(i for batch in batches for i in batch) == list(range(5))
    for batch in batches:
        assert len({sizes[i] for i in batch}) == 1 and len(batch) <= 2


def test_extractor_is_frozen_and_dimensions_come_from_the_checkpoint(tiny_backbone):
    extractor = FeatureExtractor(tiny_backbone, [1, 2], attention=True)
    assert extractor.dim == tiny_backbone.config.hidden_size
    assert not any(p.requires_grad for p in extractor.parameters())
    features = extractor(torch.randn(3, 3, 42, 70))
    assert features.patches.shape == (3, 3, 5, extractor.dim) and features.cls.shape == (3, extractor.dim)
    assert features.attention.shape == (3, 3, 5)
    torch.testing.assert_close(features.attention.sum((1, 2)) <= 1.0 + 1e-5, torch.ones(3, dtype=torch.bool))
    with pytest.raises(BackboneError, match="only 2 blocks"):
        FeatureExtractor(tiny_backbone, [3])


@pytest.fixture(scope="module")
def four_block_backbone():
    return make_tiny_dinov2(4)


def _reference_features(backbone, layers, pixels, attention):
    """Today's path: every block, every hidden state, attentions from the model's own outputs."""
    with torch.inference_mode():
        output = backbone(pixel_values=pixels, output_hidden_states=True, output_attentions=attention)
        tokens = torch.stack([backbone.layernorm(output.hidden_states[layer]) for layer in layers]).mean(0)
        weights = output.attentions[-1].mean(1)[:, 0, 1:] if attention else None
    return tokens, weights


def _blocks_run(backbone, extractor, pixels):
    calls = []
    hooks = [block.register_forward_hook(lambda *_: calls.append(1)) for block in backbone.encoder.layer]
    try:
        features = extractor(pixels)
    finally:
        for hook in hooks:
            hook.remove()
    return features, len(calls)


@pytest.mark.parametrize("layers", [[1, 2], [2], [2, 1, 2]])
def test_extractor_stops_after_the_deepest_layer_with_identical_features(four_block_backbone, layers):
    pixels = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(1))
    tokens, _ = _reference_features(four_block_backbone, layers, pixels, attention=False)
    features, blocks = _blocks_run(four_block_backbone, FeatureExtractor(four_block_backbone, layers), pixels)
    assert blocks == max(layers) < 4
    assert torch.allclose(features.cls, tokens[:, 0], atol=1e-5)
    assert torch.allclose(features.patches, tokens[:, 1:].reshape(2, 3, 4, -1), atol=1e-5)
    _, full = _blocks_run(four_block_backbone, FeatureExtractor(four_block_backbone, layers, full_depth=True), pixels)
    assert full == 4


def test_extractor_with_attention_runs_every_block_and_returns_the_last_blocks_attention():
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    backbone = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=2, mlp_ratio=2,
                                        image_size=56, patch_size=14)).eval()
    extractor = FeatureExtractor(backbone, [1], attention=True)  # switches the backbone to eager attention
    pixels = torch.randn(2, 3, 42, 56, generator=torch.Generator().manual_seed(2))
    tokens, weights = _reference_features(backbone, [1], pixels, attention=True)
    features, blocks = _blocks_run(backbone, extractor, pixels)
    assert blocks == 3
    assert torch.allclose(features.patches, tokens[:, 1:].reshape(2, 3, 4, -1), atol=1e-5)
    assert torch.allclose(features.attention, weights.reshape(2, 3, 4), atol=1e-5)


def test_loading_a_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="without config.json"):
        load_backbone(str(tmp_path))


class FakeHub:
    """Stands in for ``Dinov2Model.from_pretrained``: nothing is cached, any download attempt is recorded."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, name, **options):
        self.calls.append(options)
        raise OSError(f"{name} is not in the cache" if options.get("local_files_only") else "connection refused")


@pytest.fixture
def fake_hub(monkeypatch):
    from transformers import Dinov2Model

    hub = FakeHub()
    monkeypatch.setattr(Dinov2Model, "from_pretrained", hub)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return hub


def _refuse(*args, **kwargs):
    raise ConnectionRefusedError("no network in tests")


def test_unreachable_hub_fails_fast_with_one_message_and_no_download(fake_hub, monkeypatch):
    monkeypatch.setattr(socket, "create_connection", _refuse)
    with pytest.raises(BackboneError) as error:
        load_backbone("facebook/dinov2-base")
    assert fake_hub.calls == []  # not cached, hub unreachable: no download, no retries, transformers never asked
    message = str(error.value)
    assert "cannot be reached" in message and "--BACKBONE=<local folder>" in message
    assert "Dinov2Model.from_pretrained('facebook/dinov2-base').save_pretrained(" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_hf_hub_offline_skips_the_probe(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    with pytest.raises(BackboneError, match="HF_HUB_OFFLINE=1 is set"):
        load_backbone("facebook/dinov2-base")
    assert fake_hub.calls == []


def test_reachable_hub_downloads_once_and_a_failure_still_gives_the_advice(fake_hub, monkeypatch):
    monkeypatch.setattr("anomalyvfm.backbone.hub_reachable", lambda: True)
    with pytest.raises(BackboneError, match="connection refused") as error:
        load_backbone("facebook/dinov2-base")
    assert fake_hub.calls == [{}]  # not cached: one download attempt
    assert "--BACKBONE=<local folder>" in str(error.value)


def test_hub_probe_is_false_when_the_connection_fails(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", _refuse)
    assert hub_reachable() is False


def test_local_checkpoint_folder_loads(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "tiny")
    loaded = load_backbone(str(tmp_path / "tiny"))
    assert loaded.config.hidden_size == tiny_backbone.config.hidden_size
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_a_cached_hub_id_is_read_from_the_cache_first(fake_hub, monkeypatch):
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda repo, name: f"/cache/{repo}/{name}")
    monkeypatch.setattr("anomalyvfm.backbone.hub_reachable", lambda: True)
    with pytest.raises(BackboneError, match="connection refused"):  # FakeHub: not really cached, download fails
        load_backbone("facebook/dinov2-base")
    assert fake_hub.calls == [{"local_files_only": True}, {}]
