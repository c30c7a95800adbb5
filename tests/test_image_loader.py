"""ImageLoader: persistent decode workers, same-size batches, unreadable files reported, not raised."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomalyvfm import backbone
from anomalyvfm.backbone import ImageLoader, iterate_images, resolve_num_workers, to_input

import dataset_ad2


@pytest.fixture
def images(tmp_path) -> list[Path]:
    """Seven PNGs of two aspect ratios (two input sizes at IMAGE_SIZE 28) with distinct content."""
    rng = np.random.default_rng(0)
    paths = []
    for index in range(7):
        shape = (40, 60, 3) if index % 3 else (60, 40, 3)
        path = tmp_path / f"{index:03d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _break(paths: list[Path]) -> dict[Path, str]:
    """Truncate one PNG (header intact, pixels missing) and turn another into text (no header)."""
    paths[2].write_bytes(paths[2].read_bytes()[:200])
    paths[5].write_text("not an image")
    return {paths[2]: "truncated", paths[5]: "not a readable image"}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_hold_every_image_once_resized_like_to_input(images, num_workers):
    with ImageLoader(num_workers, batch_size=2) as loader:
        seen = []
        for indices, batch in loader.batches(images, 28, 14):
            assert batch.shape[0] == len(indices) <= 2 and batch.dtype == torch.float32
            for row, index in enumerate(indices):
                expected = to_input(dataset_ad2.load_image(images[index]), tuple(batch.shape[2:]))
                assert torch.equal(batch[row], expected)
            seen += indices
        assert sorted(seen) == list(range(7)) and loader.unreadable == []


@pytest.mark.parametrize("num_workers", [0, 1])
def test_unreadable_images_are_skipped_and_reported_with_their_reason(images, num_workers):
    broken = _break(images)
    with ImageLoader(num_workers, batch_size=3) as loader:
        seen = [index for indices, _ in loader.batches(images, 28, 14) for index in indices]
        assert sorted(seen) == [0, 1, 3, 4, 6]
        assert [path for path, _ in loader.unreadable] == sorted(broken)
        for path, reason in loader.unreadable:
            assert broken[path] in reason
        list(loader.batches([images[0]], 28, 14))
        assert loader.unreadable == []  # each pass reports its own files


def test_iterate_images_raises_for_an_unreadable_image_after_the_pass(images):
    _break(images)
    seen = []
    with pytest.raises(dataset_ad2.UnreadableImageError):
        for indices, _ in iterate_images(images, 28, 14, batch_size=2, num_workers=0):
            seen += indices
    assert sorted(seen) == [0, 1, 3, 4, 6]


def test_worker_processes_persist_across_passes(images):
    with ImageLoader(2, batch_size=2) as loader:
        list(loader.batches(images, 28, 14))
        workers = set(loader._pool._processes)  # the executor's worker pids
        list(loader.batches(images[:3], 28, 14))
        assert workers and set(loader._pool._processes) == workers
    assert loader._pool is None


def test_an_abandoned_pass_leaves_the_loader_usable(images):
    with ImageLoader(1, batch_size=1, prefetch=3) as loader:
        for _ in loader.batches(images, 28, 14):
            break
        assert sum(len(indices) for indices, _ in loader.batches(images, 28, 14)) == 7


@pytest.mark.parametrize("cores, expected", [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_auto_workers_leave_a_core_for_the_backbone(monkeypatch, cores, expected):
    monkeypatch.setattr(backbone.os, "sched_getaffinity", lambda _: set(range(cores)), raising=False)
    assert resolve_num_workers("auto") == expected
    assert resolve_num_workers(3) == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_batches_arrive_on_the_gpu_equal_to_the_cpu_ones(images):
    with ImageLoader(0, batch_size=4) as cpu, ImageLoader(0, batch_size=4, device="cuda") as gpu:
        for (cpu_indices, cpu_batch), (gpu_indices, gpu_batch) in zip(cpu.batches(images, 28, 14),
                                                                      gpu.batches(images, 28, 14)):
            assert cpu_indices == gpu_indices and gpu_batch.is_cuda
            assert torch.equal(gpu_batch.cpu(), cpu_batch)
