"""Preprocessing, the frozen feature extractor and backbone loading errors."""

import socket
import time

import numpy as np
import pytest
import torch

from anomalyvfm.backbone import (BackboneError, FeatureExtractor, _SameSizeBatches, hub_reachable, load_backbone,
                                 normalize, target_size, to_input)


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
    start = time.perf_counter()
    with pytest.raises(BackboneError) as error:
        load_backbone("facebook/dinov2-base")
    assert time.perf_counter() - start < 3
    assert fake_hub.calls == [{"local_files_only": True}]  # the cache only; no download, no retries
    message = str(error.value)
    assert "cannot be reached" in message and "--BACKBONE=<local folder>" in message
    assert "Dinov2Model.from_pretrained('facebook/dinov2-base').save_pretrained(" in message
    assert "HF_HUB_OFFLINE=1" in message


def test_hf_hub_offline_skips_the_probe(fake_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("probed the network"))
    with pytest.raises(BackboneError, match="HF_HUB_OFFLINE=1 is set"):
        load_backbone("facebook/dinov2-base")
    assert fake_hub.calls == [{"local_files_only": True}]


def test_reachable_hub_downloads_once_and_a_failure_still_gives_the_advice(fake_hub, monkeypatch):
    monkeypatch.setattr("anomalyvfm.backbone.hub_reachable", lambda: True)
    with pytest.raises(BackboneError, match="connection refused") as error:
        load_backbone("facebook/dinov2-base")
    assert fake_hub.calls == [{"local_files_only": True}, {}]
    assert "--BACKBONE=<local folder>" in str(error.value)


def test_hub_probe_is_false_when_the_connection_fails(monkeypatch):
    monkeypatch.setattr(socket, "create_connection", _refuse)
    assert hub_reachable() is False


def test_local_checkpoint_folder_loads(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "tiny")
    loaded = load_backbone(str(tmp_path / "tiny"))
    assert loaded.config.hidden_size == tiny_backbone.config.hidden_size
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
