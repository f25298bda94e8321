import pytest
import torch

from gdensify.builtin_scene import orbit_cameras
from gdensify.data.batch import ViewBatch, ViewExample
from gdensify.models import GDConfig, GDModel
from gdensify.training.config import TrainConfig
from gdensify.training.losses import photometric_loss
from gdensify.training.sampling import StepSampler
from gdensify.training.schedule import adamw_param_groups, warmup_schedule
from gdensify.training.system import ReconstructionSystem


def test_photometric_loss_uses_ms_ssim_only_on_large_images():
    g = torch.Generator().manual_seed(0)
    small = torch.rand(2, 64, 64, 3, generator=g)
    loss, parts = photometric_loss(small, small)
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and parts["ssim"].item() == pytest.approx(1.0, abs=1e-6)
    big = torch.rand(1, 176, 176, 3, generator=g)
    noisy = (big + 0.1 * torch.randn(big.shape, generator=g)).clamp(0, 1)
    loss, parts = photometric_loss(noisy, big)
    assert loss.item() == pytest.approx(parts["mse"].item() + 0.5 * (1 - parts["ssim"].item()), rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        photometric_loss(small, big)


def test_warmup_schedule_and_param_groups():
    lrs = [warmup_schedule(s, 10, 100, 4e-4, 1e-4, "constant") for s in range(20)]
    assert lrs[0] == pytest.approx(4e-5) and lrs[9] == pytest.approx(4e-4) and lrs[10:] == [1e-4] * 10
    cosine = [warmup_schedule(s, 10, 100, 4e-4, 1e-4, "cosine") for s in (10, 55, 100)]
    assert cosine == pytest.approx([4e-4, 2.5e-4, 1e-4])
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = adamw_param_groups(model, 0.05)
    assert len(decay["params"]) == 1 and len(no_decay["params"]) == 3 and no_decay["weight_decay"] == 0.0


def test_step_sampler_depends_only_on_the_step():
    whole = list(StepSampler(5, 3, 8, seed=3))
    assert len(whole) == 24 == len(StepSampler(5, 3, 8, seed=3))
    resumed = StepSampler(5, 3, 8, seed=3, step_source=lambda: 2)
    assert len(resumed) == 18 and list(resumed) == whole[6:]
    assert sorted(i for i, _ in whole[:5]) == list(range(5))  # every pass visits every item once
    assert sorted(i for i, _ in whole[5:10]) == list(range(5)) and whole[:5] != whole[5:10]
    assert list(StepSampler(5, 3, 8, seed=4)) != whole
    with pytest.raises(ValueError, match="empty"):
        StepSampler(0, 1, 4)


def test_training_step_updates_a_coarse_only_model():
    torch.manual_seed(0)
    config = GDConfig.preset("object-tiny")
    config.densify = False
    system = ReconstructionSystem(GDModel(config), TrainConfig(max_steps=10, warmup_steps=2))
    cams = orbit_cameras(4, 32, 32)
    g = torch.Generator().manual_seed(0)
    batch = ViewBatch.collate([ViewExample(torch.rand(2, 32, 32, 3, generator=g), cams[:2],
                                           torch.rand(2, 32, 32, 3, generator=g), cams[2:], torch.ones(2, 3), "a")])
    optim = system.configure_optimizers()["optimizer"]
    before = [p.detach().clone() for p in system.model.parameters()]
    loss = system.training_step(batch, 0)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    optim.step()
    changed = sum(not torch.equal(p, q) for p, q in zip(system.model.parameters(), before))
    assert changed > 0.9 * len(before)
