"""The training recipes follow the release where it differs silently from our earlier presets (issue 14): the
tiny object densifier's grid, per-view random grey target backgrounds, loud warnings for `paper` presets without
pretrained weights, pixelSplat's scene view sampler schedule, the `paper` warm-up, and the reported counts."""

import torch

from gdensify.densify import GenerativeDensifier
from gdensify.densify import point_transformer
from gdensify.models import GDConfig
from gdensify.models.lara import LaRaConfig


def _surface_cells(cell: float, radius: float = 0.3) -> torch.Tensor:
    """Coarse-Gaussian-like points on a two-cell-thick spherical shell: centres of the cells near the surface,
    each moved by up to ±0.25 of a cell per axis (LaRa's centre + (2σ − 1)·½cell offsets)."""
    n = round(1.0 / cell)
    axis = (torch.arange(n) + 0.5) * cell - 0.5
    centres = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    on_surface = (centres.norm(dim=-1) - radius).abs() < cell
    g = torch.Generator().manual_seed(0)
    return centres[on_surface] + (torch.rand(int(on_surface.sum()), 3, generator=g) - 0.5) * 0.5 * cell


def _first_cpe_neighbours(config: GDConfig, coords: torch.Tensor) -> float:
    """Mean number of non-centre neighbours per occupied cell that the first block's 3×3×3 sparse conv sees."""
    maps = []
    build = point_transformer.build_voxel_map

    def spy(*args, **kwargs):
        maps.append(build(*args, **kwargs))
        return maps[-1]

    densifier = GenerativeDensifier(config.densifier).eval()
    point_transformer.build_voxel_map = spy
    try:
        with torch.no_grad():
            densifier(coords, torch.randn(len(coords), config.densifier.in_channels), torch.zeros(len(coords),
                      dtype=torch.long), num_objects=1)
    finally:
        point_transformer.build_voxel_map = build
    first = maps[0]
    return (first.num_pairs - first.num_voxels) / first.num_voxels


def test_tiny_object_densifier_grid_is_one_coarse_cell_so_the_first_cpe_sees_neighbours():
    config = GDConfig.preset("object-tiny")
    cell = config.backbone.cell_size
    assert config.densifier.grid_size == cell == LaRaConfig.preset("tiny").cell_size
    coords = _surface_cells(cell)
    neighbours = _first_cpe_neighbours(config, coords)
    assert 12 < neighbours <= 26, neighbours  # a shell of cells: its in-shell neighbours (13.2 here)
    half = GDConfig.preset("object-tiny")
    half.densifier.grid_size = cell / 2  # the earlier preset: one point per cell, no neighbours at ±1
    assert _first_cpe_neighbours(half, coords) < 1.0


def test_object_training_targets_are_composited_on_greys_drawn_from_the_example_generator(tmp_path):
    from gdensify.data.blender import load_blender_split
    from gdensify.data.blender_objects import BlenderDataConfig, BlenderObjects, random_greys
    from gdensify.data.view_samplers import TrainingViewSampler
    from gdensify.synthetic.objects import generate_objects

    generate_objects(tmp_path / "objects", 1, seed=5, resolution=24, n_train=12, n_test=2, supersample=1,
                     progress=False)
    config = BlenderDataConfig(root=str(tmp_path / "objects"), n_inputs=3, n_targets=6)
    assert config.target_backgrounds == "random_grey"  # the release's default
    dataset = BlenderObjects(config, 24).training_dataset()
    seen = set()
    for seed in range(6):
        example = dataset[0, seed]
        generator = torch.Generator().manual_seed(seed)  # the example's generator: views first, then greys
        inputs, targets = TrainingViewSampler(3, 6)(dataset.cameras(0), generator)
        expected = random_greys(6, generator)
        torch.testing.assert_close(example.target_backgrounds, expected)
        views = load_blender_split(dataset.objects[0], "train", resolution=24, indices=targets)
        for image, background, mask in zip(example.target_images, expected, views.masks):
            corner = image[mask[..., 0] == 0]  # pixels the object does not cover show the view's grey
            torch.testing.assert_close(corner, background.expand_as(corner), atol=1e-6, rtol=0)
        assert torch.all(example.input_background == 1) and torch.all(example.input_images[0, 0, 0] == 1)
        seen.update(expected[:, 0].tolist())
    assert seen == {0.0, 0.5, 1.0}
    fixed = BlenderObjects(BlenderDataConfig(root=config.root, n_inputs=3, n_targets=6, target_backgrounds="fixed"),
                           24).training_dataset()[0, 0]
    assert torch.all(fixed.target_backgrounds == 1)


def test_paper_presets_without_pretrained_weights_warn_loudly_and_name_the_keys(tmp_path):
    import pytest

    from gdensify.training.experiment import experiment_preset, load_experiment
    from gdensify.training.fit import fit

    assert experiment_preset("paper").missing_pretrained_weights() == ["model.backbone.encoder_weights"]
    assert experiment_preset("scene-paper").missing_pretrained_weights() == [
        "model.backbone.feature_backbone_weights"]
    assert experiment_preset("tiny").missing_pretrained_weights() == []  # tiny models train from scratch
    assert experiment_preset("scene-tiny").missing_pretrained_weights() == []
    given = load_experiment("paper", ["model.backbone.encoder_weights=dino.safetensors"])
    assert given.missing_pretrained_weights() == []
    paper = load_experiment("paper", [f"data.root={tmp_path / 'none'}", f"train.out_dir={tmp_path / 'run'}"])
    with pytest.warns(UserWarning, match=r"RANDOM weights.*model\.backbone\.encoder_weights=FILE"):
        with pytest.raises(FileNotFoundError, match="data.root"):  # the warning comes before anything is built
            fit(paper, progress=False)


def test_paper_warm_up_is_the_release_s_1000_steps():
    from gdensify.training.config import TrainConfig
    from gdensify.training.experiment import experiment_preset

    assert experiment_preset("paper").train.warmup_steps == 1000
    assert TrainConfig().warmup_steps == 1000  # the documented default is the released recipe
    assert experiment_preset("tiny").train.warmup_steps == 100  # the shipped tiny recipe keeps its own


def test_scene_paper_context_gap_grows_from_25_to_45_over_the_warm_up_then_stays_45():
    from gdensify.data.registry import build_dataset
    from gdensify.training.experiment import experiment_preset

    sampler = build_dataset(experiment_preset("scene-paper").data).view_sampler()
    g = torch.Generator().manual_seed(0)
    for step, gap in ((0, 25), (20_000, 29), (50_000, 35), (100_000, 45), (299_999, 45)):
        for _ in range(5):
            context, _ = sampler.sample(300, g, step=step)
            assert int(context[1] - context[0]) == gap, (step, context)


def test_the_training_step_reaches_the_scene_view_sampler_through_the_example_seed(tmp_path):
    import pickle

    from gdensify.data.re10k_scenes import RE10KDataConfig
    from gdensify.data.registry import build_dataset
    from gdensify.data.source import ExampleSeed, step_of
    from gdensify.synthetic.scenes import generate_scenes
    from gdensify.training.sampling import StepSampler

    generate_scenes(tmp_path, 2, seed=3, test_fraction=0.5, progress=False, width=32, height=24, frames_min=14,
                    frames_max=14, eval_context_gap=8, scenes_per_chunk=2)
    config = RE10KDataConfig(root=str(tmp_path), image_size=16, n_targets=1, min_gap=8, max_gap=12,
                             gap_warm_up_steps=6, initial_min_gap=2, initial_max_gap=4, pixelsplat_gap_bug=True)
    dataset = build_dataset(config).training_dataset()
    keys = list(StepSampler(len(dataset), 2, 9, seed=1))
    assert [step_of(seed) for _, seed in keys] == [s for s in range(9) for _ in range(2)]
    gaps = [int(dataset[key].input_indices.diff()) for key in keys]
    assert gaps == [min(2 + s, 8) for s in range(9) for _ in range(2)]  # 2 → 8 over 6 steps, then 8
    seed = ExampleSeed(1234, step=7)
    again = pickle.loads(pickle.dumps(seed))  # DataLoader workers receive the keys pickled
    assert again == 1234 and step_of(again) == 7 and step_of(1234) == 0


def test_reports_show_coarse_all_visible_selected_and_fine_counts(tmp_path):
    from gdensify.builtin_scene import orbit_cameras
    from gdensify.data.batch import ViewExample
    from gdensify.evaluation.evaluate import evaluate_example, format_table, summarize, write_report
    from gdensify.models import GDModel

    torch.manual_seed(0)
    config = GDConfig.preset("object-tiny")
    config.selection.k = 100
    model = GDModel(config).eval()
    cams = orbit_cameras(6, 32, 32)
    g = torch.Generator().manual_seed(0)
    example = ViewExample(torch.rand(4, 32, 32, 3, generator=g), cams[:4], torch.rand(2, 32, 32, 3, generator=g),
                          cams[4:], torch.ones(2, 3), "obj")
    row = evaluate_example(model, example, generator=torch.Generator().manual_seed(0)).row
    assert row["n_coarse"] == 32**3 and row["n_selected"] == 100
    assert 100 <= row["n_visible"] <= row["n_coarse"]  # untrained: every Gaussian is visible (op ≈ 0.1)
    assert row["n_fine"] == row["n_visible"] - 100 + config.densifier.fine_count(100)
    table = format_table([row], summarize([row]))
    assert "Gaussians coarse (all) / coarse (visible) / selected / fine" in table
    assert f"{row['n_coarse']:,} / {row['n_visible']:,} / 100 / {row['n_fine']:,}" in table
    write_report([row], summarize([row]), tmp_path, "per_object.csv")
    header = (tmp_path / "per_object.csv").read_text().splitlines()[0].split(",")
    assert [c for c in header if c.startswith("n_") and c != "n_targets"] == ["n_coarse", "n_visible", "n_selected",
                                                                            "n_fine"]
    config.densify = False  # the coarse-only baseline has no visible / selected sets: shown as unavailable
    row = evaluate_example(GDModel(config).eval(), example).row
    assert row["n_visible"] is row["n_selected"] is row["n_fine"] is None
    assert f"{32**3:,} / — / — / —" in format_table([row], summarize([row]))
