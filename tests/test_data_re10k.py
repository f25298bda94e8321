"""RE10K/ACID chunk reader: round trip with the generator, crop math, evaluation index, sampler, errors."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gdensify.data.batch import ViewBatch
from gdensify.data.re10k import RE10KFormatError, camera_vectors, load_chunk
from gdensify.data.re10k_scenes import RE10KDataset
from gdensify.data.shims import crop_transform, flip_views
from gdensify.data.view_samplers import BoundedViewSampler, load_evaluation_index
from gdensify.synthetic.scenes import SceneGenConfig, generate_scenes, render_cameras, scene_description

SMALL = dict(width=72, height=56, frames_min=14, frames_max=16, eval_context_gap=8, scenes_per_chunk=2)
SEED = 21


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("re10k")
    result = generate_scenes(root, 3, seed=SEED, test_fraction=0.34, progress=False, **SMALL)
    return root, result


@pytest.fixture(scope="module")
def described():
    """The generator's own description of the test scene (index 2): (scene, camera-to-world, normalized K)."""
    return scene_description(SEED, 2, SceneGenConfig(**SMALL))


def _project(cameras, points):
    """Pixel coordinates (C, N, 2) and depth (C, N) of world points (N, 3) in float64."""
    w2c, k = cameras.world_to_camera.double(), cameras.intrinsics.double()
    cam = torch.einsum("cij,nj->cni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
    uv = torch.einsum("cij,cnj->cni", k, cam / cam[..., 2:3])[..., :2]
    return uv, cam[..., 2]


def test_round_trip_cameras_match_generator(dataset, described):
    root, result = dataset
    ds = RE10KDataset.for_evaluation(root, image_shape=None)
    assert len(ds) == 1 and ds.missing_scenes == []
    ex = ds[0]
    assert ex.name == result.test_keys[0]
    _, c2w, normalized = described
    ctx = ex.input_indices.numpy()
    assert ex.input_images.shape == (2, 56, 72, 3) and ex.input_images.dtype == torch.float32
    assert 0 <= ex.input_images.min() and ex.input_images.max() <= 1
    np.testing.assert_allclose(ex.input_cameras.camera_to_world.numpy(), c2w[ctx], atol=1e-5)
    k = ex.input_cameras.intrinsics.numpy()
    np.testing.assert_allclose(k[:, 0, 0], normalized[ctx, 0] * 72, rtol=1e-6)
    np.testing.assert_allclose(k[:, 1, 2], normalized[ctx, 3] * 56, rtol=1e-6)
    assert (ex.input_cameras.near, ex.input_cameras.far) == (1.0, 100.0)
    # OpenCV world-to-camera straight from the 18-vector, as MVSplat reads it
    raw = load_chunk(root / "test" / "000000.torch")[0]
    w2c = torch.eye(4).repeat(len(ctx), 1, 1)
    w2c[:, :3] = raw.cameras[ctx, 6:].reshape(-1, 3, 4)
    torch.testing.assert_close(ex.input_cameras.world_to_camera, w2c, atol=1e-5, rtol=0)
    w2c_all = torch.eye(4, dtype=torch.float64).repeat(len(raw), 1, 1)
    w2c_all[:, :3] = raw.cameras[:, 6:].double().reshape(-1, 3, 4)
    assert torch.equal(camera_vectors(w2c_all, raw.cameras[:, :4].double()), raw.cameras)


def test_crop_transform_numbers_match_mvsplat_on_re10k_frames():
    t = crop_transform((360, 640), (256, 256))
    assert t.scaled_hw == (256, 455) and t.offset == (0, 99)
    n = torch.tensor([[0.5, 0.5 * 640 / 360, 0.5, 0.5]], dtype=torch.float64)
    exact = t.map_normalized_intrinsics(n, "exact")[0]
    mvsplat = t.map_normalized_intrinsics(n, "mvsplat")[0]
    assert exact[0] * 256 == pytest.approx(0.5 * 455) and exact[2] * 256 == pytest.approx(128.5)
    assert mvsplat[0] == exact[0] and mvsplat[1] == exact[1] and mvsplat[2] == 0.5  # MVSplat's half-pixel offset
    with pytest.raises(ValueError, match="intrinsics_mode"):
        t.map_normalized_intrinsics(n, "nope")


@pytest.mark.parametrize("shape", [(48, 48), (56, 56), (40, 64)])
def test_points_project_to_the_same_content_after_resize_and_crop(dataset, described, shape):
    root, _ = dataset
    full = RE10KDataset.for_evaluation(root, image_shape=None)[0]
    ex = RE10KDataset.for_evaluation(root, image_shape=shape)[0]
    assert ex.input_images.shape == (2, *shape, 3) and ex.input_cameras.width == shape[1]
    transform = crop_transform((56, 72), shape)
    points = torch.tensor([[2.0, 3.0, 1.2], [3.5, 2.5, 1.6], [1.0, 1.0, 0.5]], dtype=torch.float64)
    c2w = full.input_cameras.camera_to_world.double()
    points = torch.cat([points, (c2w[:, :3, 3] + 2.5 * c2w[:, :3, 2])])  # points straight ahead of the cameras
    uv_full, _ = _project(full.input_cameras, points)
    uv_crop, _ = _project(ex.input_cameras, points)
    assert (uv_crop - transform.map_pixels(uv_full)).abs().max() < 1e-3  # requirement: < 0.5 px
    # photometric check: re-rendering the scene at the reader's cameras reproduces the reader's pixels
    scene = described[0]
    rendered, _ = render_cameras(scene, ex.input_cameras, supersample=2)
    err = np.abs(rendered - ex.input_images.numpy()).mean()
    shifted = ex.input_cameras.to(torch.float64)
    shifted.intrinsics[:, 0, 2] += 0.5
    rendered_shifted, _ = render_cameras(scene, shifted, supersample=2)
    err_shifted = np.abs(rendered_shifted - ex.input_images.numpy()).mean()
    assert err < 0.7 * err_shifted
    if not transform.resizes:  # crop only: same samples, the difference is JPEG alone
        assert err < 0.02


def test_flip_augmentation_is_a_consistent_mirror():
    g = torch.Generator().manual_seed(0)
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, 3] = torch.tensor([0.1, -0.2, 0.3])
    norm = torch.tensor([[0.8, 0.9, 0.47, 0.52]], dtype=torch.float64)
    images = torch.rand(1, 4, 6, 3, generator=g)
    f_images, f_w2c, f_norm = flip_views(images, w2c[None], norm)
    assert torch.equal(f_images[0, :, 0], images[0, :, -1])
    point = torch.tensor([0.3, 0.2, 2.0], dtype=torch.float64)
    mirrored = point * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)

    def project(w2c_, n, p):
        c = w2c_[0, :3, :3] @ p + w2c_[0, :3, 3]
        return n[0, 0] * c[0] / c[2] + n[0, 2], n[0, 1] * c[1] / c[2] + n[0, 3]

    u, v = project(w2c[None], norm, point)
    fu, fv = project(f_w2c, f_norm, mirrored)
    assert fu == pytest.approx(1 - u) and fv == pytest.approx(v)


def test_evaluation_index_skips_nulls_and_missing_scenes(dataset, tmp_path):
    root, result = dataset
    key = result.test_keys[0]
    index = {"nothere": {"context": [0, 5], "target": [1, 2, 3]}, "skipped": None,
             key: {"context": [1, 9], "target": [3, 5, 7]}}
    path = tmp_path / "idx.json"
    path.write_text(json.dumps(index))
    entries = load_evaluation_index(path)
    assert list(entries) == ["nothere", key] and entries[key].target == (3, 5, 7)
    ds = RE10KDataset(root, "test", evaluation_index=path, image_shape=(48, 48))
    assert len(ds) == 1 and ds.missing_scenes == ["nothere"]
    ex = ds[0]
    assert ex.input_indices.tolist() == [1, 9] and ex.target_indices.tolist() == [3, 5, 7]
    assert ex.target_images.shape == (3, 48, 48, 3) and len(ex.target_cameras) == 3
    assert ex.name == key and torch.all(ex.input_background == 0)  # the shared example type, black as MVSplat
    assert torch.all(ex.target_backgrounds == 0) and ex.target_backgrounds.shape == (3, 3)
    with pytest.raises(RE10KFormatError, match="nothere"):
        RE10KDataset(root, "test", evaluation_index=path, on_missing="error")
    path.write_text(json.dumps({"bad": {"context": [0, "x"], "target": [1]}}))
    with pytest.raises(RE10KFormatError, match=r"idx\.json.*'bad'"):
        load_evaluation_index(path)
    path.write_text(json.dumps({key: {"context": [0, 99], "target": [1]}}))
    with pytest.raises(RE10KFormatError, match=rf"000000\.torch.*{key}.*out of range"):
        RE10KDataset(root, "test", evaluation_index=path)[0]


def test_bounded_view_sampler_bounds_schedule_and_determinism():
    sampler = BoundedViewSampler(num_target_views=3, min_gap=5, max_gap=9, min_distance_to_context=1)
    gaps = set()
    for seed in range(200):
        ctx, tgt = sampler.sample(30, torch.Generator().manual_seed(seed))
        left, right = ctx.tolist()
        gaps.add(right - left)
        assert 0 <= left < right <= 29 and 5 <= right - left <= 9
        assert tgt.shape == (3,) and tgt.dtype == torch.int64
        assert torch.all((tgt >= left + 1) & (tgt <= right - 1))
    assert gaps == set(range(5, 10))
    a = sampler.sample(30, torch.Generator().manual_seed(7))
    b = sampler.sample(30, torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # max gap clipped to the scene length; too short raises (the datasets skip such scenes)
    ctx, _ = sampler.sample(8, torch.Generator().manual_seed(0))
    assert ctx[1] - ctx[0] <= 7
    with pytest.raises(ValueError, match="too short"):
        sampler.sample(5, torch.Generator().manual_seed(0))
    # MVSplat's warm-up schedule and the kept pixelSplat bug (gap == scheduled minimum)
    mv = BoundedViewSampler(min_gap=45, max_gap=192, initial_min_gap=25, initial_max_gap=45, warm_up_steps=150_000,
                            pixelsplat_gap_bug=True)
    assert mv.gap_bounds(0) == (25, 45) and mv.gap_bounds(75_000) == (35, 118) and mv.gap_bounds(10**6) == (45, 192)
    for step, gap in ((0, 25), (75_000, 35), (300_000, 45)):
        ctx, _ = mv.sample(300, torch.Generator().manual_seed(step), step=step)
        assert int(ctx[1] - ctx[0]) == gap
    with pytest.raises(ValueError):
        BoundedViewSampler(min_gap=10, max_gap=5)


def test_training_datasets_are_seeded_and_collate(dataset):
    root, result = dataset
    sampler = BoundedViewSampler(num_target_views=2, min_gap=4, max_gap=10)
    ds = RE10KDataset(root, "train", view_sampler=sampler, image_shape=(32, 32), seed=3, flip_augment=True)
    assert len(ds) == 2 and [k for k, _ in ds.items] == result.train_keys
    a, b = ds[1], ds[1]
    assert torch.equal(a.input_indices, b.input_indices) and torch.equal(a.target_images, b.target_images)
    plain = RE10KDataset(root, "train", view_sampler=sampler, image_shape=(32, 32))
    draws, flips = set(), set()
    for example_seed in range(8):  # (item, example_seed) keys, as the training sampler yields them
        ex, same = ds[(0, example_seed)], plain[(0, example_seed)]
        assert torch.equal(ex.input_indices, same.input_indices)  # the flip draw comes after the views
        flipped = not torch.equal(ex.input_images, same.input_images)
        assert torch.equal(ex.input_images, same.input_images.flip(-2) if flipped else same.input_images)
        draws.add(tuple(ex.input_indices.tolist()))
        flips.add(flipped)
    assert len(draws) > 1 and flips == {False, True}
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=ViewBatch.collate)))
    assert batch.input_images.shape == (2, 2, 32, 32, 3) and batch.target_images.shape == (2, 2, 32, 32, 3)
    assert len(batch.input_cameras) == 2 and batch.names == result.train_keys


# ---------------------------------------------------------------------------------------------------- errors
@pytest.fixture()
def broken(dataset, tmp_path):
    """A copy of the test split with one editable chunk."""
    root, result = dataset
    (tmp_path / "test").mkdir()
    for f in (root / "test").iterdir():
        (tmp_path / "test" / f.name).write_bytes(f.read_bytes())
    return tmp_path, result.test_keys[0], tmp_path / "test" / "000000.torch"


def _edit(chunk, fn):
    scenes = torch.load(chunk, weights_only=True)
    fn(scenes[0])
    torch.save(scenes, chunk)


def _eval_dataset(root, key):
    index = {key: {"context": [0, 8], "target": [2, 4, 6]}}
    return RE10KDataset(root, "test", evaluation_index=index, image_shape=(32, 32))


def test_corrupt_chunk_names_file_and_scene(broken):
    root, key, chunk = broken
    chunk.write_bytes(chunk.read_bytes()[:1000])
    with pytest.raises(RE10KFormatError, match=rf"000000\.torch.*{key}.*corrupt") as info:
        _eval_dataset(root, key)[0]
    assert info.value.scene == key and info.value.file.endswith("000000.torch")
    chunk.write_bytes(b"not a torch file at all")
    with pytest.raises(RE10KFormatError, match=rf"000000\.torch.*{key}.*corrupt"):
        _eval_dataset(root, key)[0]


def test_missing_key_names_file_and_scene(broken):
    root, key, chunk = broken
    _edit(chunk, lambda s: s.pop("timestamps"))
    with pytest.raises(RE10KFormatError, match=rf"000000\.torch.*{key}.*missing key.*timestamps"):
        _eval_dataset(root, key)[0]


def test_bad_camera_vector_names_file_and_scene(broken):
    root, key, chunk = broken
    _edit(chunk, lambda s: s.__setitem__("cameras", s["cameras"][:, :17]))
    with pytest.raises(RE10KFormatError, match=rf"000000\.torch.*{key}.*\(V, 18\).*17"):
        _eval_dataset(root, key)[0]


def test_undecodable_jpeg_names_file_scene_and_frame(broken):
    root, key, chunk = broken
    _edit(chunk, lambda s: s["images"].__setitem__(4, torch.tensor(list(b"garbage!"), dtype=torch.uint8)))
    with pytest.raises(RE10KFormatError, match=rf"000000\.torch.*{key}.*frame 4.*decode"):
        _eval_dataset(root, key)[0]


def test_index_pointing_to_wrong_chunk_and_untrusted_pickles(broken):
    root, key, chunk = broken
    (root / "test" / "index.json").write_text(json.dumps({key: "000007.torch"}))
    with pytest.raises(RE10KFormatError, match=rf"000007\.torch.*{key}.*not found"):
        _eval_dataset(root, key)[0]
    (root / "test" / "index.json").write_text(json.dumps({key: "000000.torch"}))
    _edit(chunk, lambda s: s.__setitem__("timestamps", s["timestamps"].numpy()))  # a NumPy array inside
    with pytest.raises(RE10KFormatError, match=r"000000\.torch.*trusted=True"):
        _eval_dataset(root, key)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RE10KFormatError, match="timestamps"):  # loads, then the validator objects
            RE10KDataset(root, "test", evaluation_index={key: {"context": [0, 8], "target": [4]}},
                         trusted=True)[0]
    assert any("weights_only" in str(w.message) for w in caught)
