"""Checks that need a CUDA device; skipped elsewhere (run by benchmarks/gpu_check.sh)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from protohead import PrototypeMemoryBank, TReX
from protohead.augment.params import CropParams, MultiCropParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def make_model() -> TReX:
    torch.manual_seed(0)
    return TReX("resnet18", num_classes=10, projector_hidden_dim=64, memory_size=256).cuda()


def test_training_step_never_syncs_with_the_host():
    model = make_model().train().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crops = [torch.randn(8, 3, 64, 64, device="cuda")] + [
        torch.randn(8, 3, 32, 32, device="cuda") for _ in range(4)
    ]
    crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
    labels = torch.randint(0, 10, (8,), device="cuda")
    for _ in range(2):  # warm up lazy init (cuDNN, allocator)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(model(crops, labels), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model.loss(model(crops, labels), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert model.memory is not None
    assert model.memory.features.dtype == torch.float32
    assert int(model.memory.ptr) == 3 * 8


def test_invalid_batch_is_skipped_on_device_without_raising():
    bank = PrototypeMemoryBank(4, 16, 3).cuda()
    before = bank.features.clone()
    bank.update(torch.full((2, 4), float("nan"), device="cuda"), torch.tensor([0, 1]).cuda())
    bank.update(torch.randn(2, 4, device="cuda"), torch.tensor([0, 5]).cuda())
    assert int(bank.num_skipped_updates) == 2
    assert torch.equal(bank.features, before)


def test_memory_matches_cpu_reference():
    gen = torch.Generator().manual_seed(0)
    cpu = PrototypeMemoryBank(8, 32, 5, generator=torch.Generator().manual_seed(1))
    gpu = PrototypeMemoryBank(8, 32, 5, generator=torch.Generator().manual_seed(1)).cuda()
    for _ in range(20):
        f, lab = torch.randn(7, 8, generator=gen), torch.randint(0, 5, (7,), generator=gen)
        cpu.update(f, lab)
        gpu.update(f.cuda(), lab.cuda())
    torch.testing.assert_close(gpu.prototypes().cpu(), cpu.prototypes(), atol=1e-5, rtol=0)


def test_gpu_multicrop_on_cuda_matches_the_cpu_render():
    from protohead.augment.batched import BatchedMultiCrop

    kwargs = {"num_local_crops": 3, "global_crop_size": 64, "local_crop_size": 32}
    images = torch.randint(0, 256, (6, 3, 80, 96), dtype=torch.uint8)
    aug = BatchedMultiCrop(**kwargs, global_solarize_p=0.5)
    params = aug.sample_params(torch.tensor([[80, 96]] * 6), torch.Generator().manual_seed(0))
    cpu = aug.render(images, params)
    cuda_params = MultiCropParams(
        *(
            CropParams(**{f.name: getattr(p, f.name).cuda() for f in dataclasses.fields(p)})
            for p in (params.global_crops, params.local_crops)
        )
    )
    gpu = aug.cuda().render(images.cuda(), cuda_params)
    for a, b in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(b.cpu(), a, atol=1e-3, rtol=0)


def test_fused_gpu_multicrop_matches_eager_and_never_syncs():
    from protohead.augment.batched import BatchedMultiCrop

    kwargs = {"num_local_crops": 3, "global_crop_size": 64, "local_crop_size": 32}
    images = torch.randint(0, 256, (6, 3, 80, 96), dtype=torch.uint8, device="cuda")
    eager = BatchedMultiCrop(**kwargs, global_solarize_p=0.5).cuda()
    fused = BatchedMultiCrop(**kwargs, global_solarize_p=0.5, fuse=True).cuda()
    params = eager.sample_params(
        torch.tensor([[80, 96]] * 6, device="cuda"), torch.Generator("cuda").manual_seed(0)
    )
    for a, b in zip(eager.render(images, params), fused.render(images, params), strict=True):
        torch.testing.assert_close(b, a, atol=1e-3, rtol=0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fused(images, generator=torch.Generator("cuda").manual_seed(1))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_rng_state_loaded_onto_the_gpu_restores(tmp_path):
    # A resumed GPU run loads its checkpoint with map_location="cuda", RNG states included.
    from protohead.train.checkpoint import (
        get_rng_state,
        load_checkpoint,
        save_checkpoint,
        set_rng_state,
    )

    save_checkpoint({"rng": get_rng_state()}, tmp_path / "c.pth")
    first = torch.rand(3)
    loaded = load_checkpoint(tmp_path / "c.pth", map_location="cuda")
    assert loaded["rng"]["torch"].is_cuda
    set_rng_state(loaded["rng"])
    assert torch.equal(first, torch.rand(3))
