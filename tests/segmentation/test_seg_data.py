"""Segmentation data: synthetic vessels (determinism, format) and image/mask folders (layouts, classes, errors)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsetrain.config.schema import DataConfig
from sparsetrain.data.base import DataError
from sparsetrain.data.segmentation import build_segmentation_data
from sparsetrain.data.vessels import make_vessel_images


def seg_folder(path: Path, **kwargs) -> DataConfig:
    return DataConfig(source="seg_folder", path=str(path), normalize=False, **kwargs)


def write_pair(root: Path, stem: str, mask: np.ndarray, mask_stem: str | None = None, ext: str = ".png",
               mode: str = "RGB") -> None:
    """An image (random pixels, same size as `mask`) and its mask under root/images and root/masks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    shape = mask.shape + ((3,) if mode == "RGB" else ())
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(root / "images" / f"{stem}{ext}")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{mask_stem or stem}.png")


def disk_mask(size: int, value: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    c = 3 + seed % (size - 6)
    return np.where((yy - c) ** 2 + (xx - size // 2) ** 2 < 9, value, 0)


# ------------------------------------------------------------------------------------------- synthetic


def test_synthetic_vessels_are_deterministic_from_seed() -> None:
    a, b, c = make_vessel_images(6, 32, seed=3), make_vessel_images(6, 32, seed=3), make_vessel_images(6, 32, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "same seed, different data"
    assert not torch.equal(a[1], c[1]), "different seeds, same masks"


def test_synthetic_vessels_format() -> None:
    images, masks = make_vessel_images(64, 64, seed=0)
    assert images.shape == (64, 3, 64, 64) and images.dtype == torch.float32
    assert masks.shape == (64, 64, 64) and masks.dtype == torch.int64
    assert set(masks.unique().tolist()) == {0, 1}
    assert 0.03 < masks.float().mean() < 0.3, f"vessel fraction {masks.float().mean():.3f}"
    assert 0.0 <= images.min() and images.max() <= 1.0
    # Vessels are darker than the background in every image that has some.
    vessel = (images.mean(1) * masks).sum((1, 2)) / masks.sum((1, 2)).clamp_min(1)
    background = (images.mean(1) * (1 - masks)).sum((1, 2)) / (1 - masks).sum((1, 2))
    has_vessels = masks.sum((1, 2)) > 0
    assert (vessel[has_vessels] < background[has_vessels]).float().mean() > 0.9


def test_build_synthetic_bundle() -> None:
    cfg = DataConfig(source="seg_synthetic", num_samples=40, image_size=32, test_fraction=0.25)
    bundle = build_segmentation_data(cfg, seed=0)
    assert (len(bundle.train), len(bundle.test)) == (30, 10)
    assert bundle.num_classes == 1 and bundle.in_chans == 3 and bundle.input_shape == (3, 32, 32)
    x, y = bundle.train.__getitems__([0, 5, 7])
    assert x.shape == (3, 3, 32, 32) and y.shape == (3, 32, 32) and y.dtype == torch.int64
    torch.testing.assert_close(bundle.train.inputs.mean((0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    gray = build_segmentation_data(DataConfig(source="seg_synthetic", num_samples=16, in_chans=1), seed=0)
    assert gray.input_shape == (1, 64, 64), "default synthetic size is 64, in_chans=1 averages the colours"


# ------------------------------------------------------------------------------------------- folders


def test_binary_folder_with_drive_names_and_split(tmp_path: Path) -> None:
    for i in range(5):  # DRIVE style: NN_training.tif ↔ NN_manual1.png (0/255)
        write_pair(tmp_path, f"{21 + i}_training", disk_mask(16, 255, i), mask_stem=f"{21 + i}_manual1", ext=".tif")
    bundle = build_segmentation_data(seg_folder(tmp_path, test_fraction=0.4), seed=0)
    assert bundle.num_classes == 1 and bundle.input_shape == (3, 16, 16)
    assert (len(bundle.train), len(bundle.test)) == (3, 2)
    assert set(torch.cat([bundle.train.targets, bundle.test.targets]).unique().tolist()) == {0, 1}
    again = build_segmentation_data(seg_folder(tmp_path, test_fraction=0.4), seed=0)
    assert torch.equal(again.test.targets, bundle.test.targets), "split is not reproducible from the seed"


def test_multiclass_folder_with_train_test_and_resize(tmp_path: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            mask = disk_mask(20, 1, i) + 2 * (np.arange(20)[None, :] > 15)  # labels 0, 1, 2
            write_pair(tmp_path / split, f"img{i}", mask, mask_stem=f"img{i}_gt", mode="L")
    bundle = build_segmentation_data(seg_folder(tmp_path, image_size=8), seed=0)
    assert bundle.num_classes == 3 and bundle.in_chans == 1 and bundle.input_shape == (1, 8, 8)
    assert (len(bundle.train), len(bundle.test)) == (3, 2)
    assert bundle.train.targets.shape == (3, 8, 8)
    assert set(bundle.train.targets.unique().tolist()) <= {0, 1, 2}, "nearest resize must keep labels"
    assert bundle.preprocessing["resize"]["size"] == [8, 8] and bundle.preprocessing["resize"]["mode"] == "squash"
    assert bundle.classes is None, "three labels and no classes.txt: no names"


def test_classes_txt_sets_the_class_count(tmp_path: Path) -> None:
    for i in range(3):
        write_pair(tmp_path, f"a{i}", disk_mask(12, 1, i))
    (tmp_path / "classes.txt").write_text("background\nvessel\nartery\nvein\n")
    named = build_segmentation_data(seg_folder(tmp_path), seed=0)
    assert named.num_classes == 4 and named.classes == ("background", "vessel", "artery", "vein")
    assert named.preprocessing["resize"] is None, "no data.image_size: images are used at their own size"
    (tmp_path / "classes.txt").write_text("2\n")
    binary = build_segmentation_data(seg_folder(tmp_path), seed=0)
    assert binary.num_classes == 1 and binary.classes == ("background", "foreground")


def test_exact_stem_wins_over_tagged_mask(tmp_path: Path) -> None:
    write_pair(tmp_path, "x", disk_mask(12, 1, 0))
    write_pair(tmp_path, "y", disk_mask(12, 1, 1))
    Image.fromarray(np.full((12, 12), 1, np.uint8)).save(tmp_path / "masks" / "x_1stHO.png")
    bundle = build_segmentation_data(seg_folder(tmp_path, test_fraction=0.5), seed=0)
    assert torch.cat([bundle.train.targets, bundle.test.targets]).float().mean() < 0.5


# ------------------------------------------------------------------------------------------- errors


def expect_error(cfg: DataConfig, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern) as info:
        build_segmentation_data(cfg, seed=0)
    assert "\n" not in str(info.value), "DataError messages are one line"


def test_error_missing_mask(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", disk_mask(12, 255, 0))
    write_pair(tmp_path, "b", disk_mask(12, 255, 1), mask_stem="other")
    expect_error(seg_folder(tmp_path), r"b\.png: no mask in .*masks \(expected stem 'b'")


def test_error_size_mismatch(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", disk_mask(12, 255, 0))
    write_pair(tmp_path, "b", disk_mask(12, 255, 1))
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "masks" / "b.png")
    expect_error(seg_folder(tmp_path), r"b\.png: mask is 12×10 but image b\.png is 12×12")


def test_error_values_outside_declared_classes(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", disk_mask(12, 1, 0))
    write_pair(tmp_path, "b", disk_mask(12, 3, 1))
    (tmp_path / "classes.txt").write_text("3")
    expect_error(seg_folder(tmp_path), r"masks/b\.png: mask value 3 outside the class range 0\.\.2 .*declares 3")


def test_error_values_outside_inferred_classes(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", disk_mask(12, 255, 0))
    write_pair(tmp_path, "b", disk_mask(12, 128, 1))  # e.g. an anti-aliased or mis-scaled binary mask
    expect_error(seg_folder(tmp_path), r"masks/b\.png: mask value 128 outside the class range 0\.\.31")


def test_error_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    expect_error(seg_folder(tmp_path), r"no image files .* in .*images")
    expect_error(seg_folder(tmp_path / "nowhere"), "segmentation folder not found")
    (tmp_path / "a.png").write_bytes(b"")
    expect_error(seg_folder(tmp_path / "a.png"), r"a.png is a file; data.source=\w+ reads a folder of images/")
    (tmp_path / "train").mkdir()
    expect_error(seg_folder(tmp_path), r"folder not found: .*train/images")


def test_error_colour_mask_and_differing_sizes(tmp_path: Path) -> None:
    write_pair(tmp_path, "a", disk_mask(12, 1, 0))
    write_pair(tmp_path, "b", disk_mask(16, 1, 1))
    expect_error(seg_folder(tmp_path), r"differ in size .* set data\.image_size")
    colour = np.zeros((16, 16, 3), np.uint8)
    colour[2, 2] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "masks" / "b.png")
    expect_error(seg_folder(tmp_path, image_size=8), r"b\.png: colour mask")


def test_gray_masks_saved_as_rgb_are_read_as_gray_and_said_once(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    for split, stem in (("train", "a"), ("train", "b"), ("test", "c")):
        write_pair(tmp_path / split, stem, disk_mask(12, 255, len(stem)))
    gray = np.asarray(Image.open(tmp_path / "train" / "masks" / "b.png"))
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "train" / "masks" / "b.png")
    Image.fromarray(np.stack([gray] * 3, axis=-1)).save(tmp_path / "test" / "masks" / "c.png")
    with caplog.at_level("INFO", logger="sparsetrain"):
        bundle = build_segmentation_data(seg_folder(tmp_path), seed=0)
    assert int(bundle.train.targets[1].sum()) == int((gray == 255).sum()), "the RGB mask's labels were not kept"
    lines = [r.getMessage() for r in caplog.records if "RGB" in r.getMessage()]
    assert lines == [f"data.path: 2 of 3 mask files are RGB images with equal channels (e.g. "
                     f"{tmp_path / 'train' / 'masks' / 'b.png'}): read as gray label images (their first channel); "
                     "a colour-coded mask would be refused"], lines


def test_given_split_gray_next_to_colour_and_size_mismatch(tmp_path: Path) -> None:
    write_pair(tmp_path / "train", "a", disk_mask(12, 1, 0), mode="L")
    write_pair(tmp_path / "test", "b", disk_mask(12, 1, 1), mode="RGB")
    bundle = build_segmentation_data(seg_folder(tmp_path), seed=0)
    assert bundle.train.inputs.shape == (1, 3, 12, 12), "gray train images take the test split's 3 channels"
    write_pair(tmp_path / "test", "b", disk_mask(10, 1, 1))
    expect_error(seg_folder(tmp_path), r"train images are \(12, 12\) but test images \(10, 10\)")


# ------------------------------------------------------------------------------------------- bit depth, damaged files


def write_16bit_pair(root: Path, stem: str, seed: int, ext: str = ".png") -> np.ndarray:
    """A 16-bit gray image (values 1,000-50,000) and a binary mask; returns the raw pixels."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(1_000, 50_000, (8, 8)).astype(np.uint16)
    write_pair(root, stem, disk_mask(8, 255, seed))
    (root / "images" / f"{stem}.png").unlink()
    image = Image.fromarray(pixels) if ext == ".png" else Image.fromarray(pixels.astype(np.int32))  # TIFF: mode I
    image.save(root / "images" / f"{stem}{ext}")
    return pixels


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_images_are_scaled_by_1_65535_and_the_record_says_so(tmp_path: Path, ext: str) -> None:
    """PNG: PIL mode I;16; TIFF of int32: mode I (what older Pillow gives 16-bit PNGs), which PIL's convert clipped."""
    raws = [write_16bit_pair(tmp_path / split, stem, seed, ext)
            for seed, (split, stem) in enumerate((("train", "a"), ("train", "b"), ("test", "c")))]
    bundle = build_segmentation_data(seg_folder(tmp_path), seed=0)
    assert bundle.preprocessing["scale"] == 1 / 65535 and "16-bit" in bundle.preprocessing["raw"]
    inputs = torch.cat([bundle.train.inputs, bundle.test.inputs])
    for raw, x in zip(raws, inputs, strict=True):
        np.testing.assert_allclose(x[0].numpy(), raw * bundle.preprocessing["scale"], atol=1e-6)



def test_16bit_colour_png_is_read_at_full_depth(tmp_path: Path) -> None:
    """Pillow opens a 48-bit PNG as 8-bit RGB (the low byte dropped): the set was read as 8-bit × 1/255; a 16-bit
    gray image beside it was then refused as another bit depth."""
    from tests.helpers.png16 import write_png16

    rng = np.random.default_rng(0)
    colour = (rng.integers(100, 140, (8, 8, 3)) * 256 + rng.integers(0, 256, (8, 8, 3))).astype(np.uint16)
    write_pair(tmp_path / "train", "a", disk_mask(8, 255, 0))
    write_png16(tmp_path / "train" / "images" / "a.png", colour)
    gray = write_16bit_pair(tmp_path / "test", "b", 1)
    bundle = build_segmentation_data(seg_folder(tmp_path), seed=0)
    prep = bundle.preprocessing
    assert prep["scale"] == 1 / 65535 and "16-bit pixels 0-65535 read as stored" in prep["raw"], prep["raw"]
    assert prep["color"]["applied"] == "any gray file repeated to 3 channels; any colour file as stored", prep["color"]
    np.testing.assert_allclose(bundle.train.inputs[0].numpy(), colour.transpose(2, 0, 1) * prep["scale"], atol=1e-6,
                               rtol=0, err_msg="48-bit image: input is not raw * recorded scale")
    np.testing.assert_allclose(bundle.test.inputs[0].numpy(), np.broadcast_to(gray * prep["scale"], (3, 8, 8)),
                               atol=1e-6, rtol=0, err_msg="16-bit gray image: input is not raw * recorded scale")


def test_16bit_colour_tiff_is_read_at_full_depth(tmp_path: Path) -> None:
    """Pillow opens 16-bit RGB(A) TIFFs as 8-bit RGB (the low byte dropped): the set was read as 8-bit × 1/255, and a
    16-bit gray TIFF beside them was refused as another bit depth."""
    from tests.helpers.tiff16 import write_tiff16

    rng = np.random.default_rng(0)
    raws = {}
    for split, stem, chans, options in (("train", "a", 3, {"planarconfig": "separate"}), ("train", "b", 4, {}),
                                        ("test", "c", 1, {})):
        high, low = rng.integers(100, 140, (8, 8, chans)), rng.integers(0, 256, (8, 8, chans))  # the low byte matters
        raws[stem] = (high * 256 + low).astype(np.uint16)
        write_pair(tmp_path / split, stem, disk_mask(8, 255, len(raws)))
        (tmp_path / split / "images" / f"{stem}.png").unlink()
        write_tiff16(tmp_path / split / "images" / f"{stem}.tif", raws[stem], **options)
    bundle = build_segmentation_data(seg_folder(tmp_path), seed=0)
    prep = bundle.preprocessing
    assert prep["scale"] == 1 / 65535 and "colour TIFFs by tifffile" in prep["raw"], prep["raw"]
    inputs = dict(zip("abc", torch.cat([bundle.train.inputs, bundle.test.inputs]), strict=True))
    for stem, raw in raws.items():
        expected = np.broadcast_to(raw[..., :3].transpose(2, 0, 1), (3, 8, 8)) * prep["scale"]
        np.testing.assert_allclose(inputs[stem].numpy(), expected, atol=1e-6, rtol=0,
                                   err_msg=f"{stem}.tif: input is not raw * recorded scale")


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_colour_mask_keeps_its_labels(tmp_path: Path, ext: str) -> None:
    """PIL opens a 16-bit RGB mask as 8-bit RGB, keeping the high byte: labels 1 and 2 became 0, an all-background
    mask, silently."""
    from tests.helpers.png16 import write_png16
    from tests.helpers.tiff16 import write_tiff16

    labels = {}
    for seed, (split, stem) in enumerate((("train", "a"), ("train", "b"), ("test", "c"))):
        write_pair(tmp_path / split, stem, disk_mask(8, 1, seed))
        labels[stem] = disk_mask(8, 1, seed) + (np.arange(8)[None, :] == 7) * 2  # labels 0, 1, 2
        (tmp_path / split / "masks" / f"{stem}.png").unlink()
        write = write_png16 if ext == ".png" else write_tiff16
        write(tmp_path / split / "masks" / f"{stem}{ext}", np.repeat(labels[stem][..., None], 3, 2).astype(np.uint16))
    bundle = build_segmentation_data(seg_folder(tmp_path), seed=0)
    assert bundle.num_classes == 3, bundle.num_classes
    masks = torch.cat([bundle.train.targets, bundle.test.targets])
    for stem, y in zip("abc", masks, strict=True):
        np.testing.assert_array_equal(y.numpy(), labels[stem], err_msg=f"{stem}{ext}: labels not kept")


def test_float_images_are_refused_naming_the_file(tmp_path: Path) -> None:
    """A 32-bit float TIFF (PIL mode F, values in [0, 1]) went through PIL's 8-bit conversion: 0 or 1 of 255, a
    black image, silently."""
    write_pair(tmp_path / "train", "a", disk_mask(8, 255, 0))
    write_pair(tmp_path / "test", "b", disk_mask(8, 255, 1))
    (tmp_path / "train" / "images" / "a.png").unlink()
    floats = tmp_path / "train" / "images" / "a.tif"
    Image.fromarray(np.random.default_rng(0).random((8, 8), dtype=np.float32)).save(floats)
    expect_error(seg_folder(tmp_path), rf"^{floats}: 32-bit float pixels \(PIL mode F\); sparsetrain reads 8-bit and "
                                       "16-bit images: save them as 16-bit PNG or TIFF")


def test_mixed_bit_depths_are_refused_naming_two_files(tmp_path: Path) -> None:
    write_16bit_pair(tmp_path / "train", "a", 0)
    write_pair(tmp_path / "test", "b", disk_mask(8, 255, 1), mode="L")
    expect_error(seg_folder(tmp_path), rf"^data\.path: {tmp_path / 'test' / 'images' / 'b.png'} is a 8-bit image "
                                       rf"but {tmp_path / 'train' / 'images' / 'a.png'} is 16-bit; save all images "
                                       "with one bit depth")
    write_pair(tmp_path / "train", "c", disk_mask(8, 255, 2), mode="L")
    expect_error(seg_folder(tmp_path), rf"^data\.path: {tmp_path / 'train' / 'images' / 'c.png'} is a 8-bit image "
                                       rf"but {tmp_path / 'train' / 'images' / 'a.png'} is 16-bit")


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_damaged_image_or_mask_is_named(tmp_path: Path, folder: str) -> None:
    for seed, stem in enumerate("abc"):
        write_pair(tmp_path, stem, disk_mask(12, 255, seed))
    what = "image" if folder == "images" else "mask"
    corrupt, truncated = tmp_path / folder / "b.png", tmp_path / folder / "c.png"
    truncated.write_bytes(truncated.read_bytes()[:-30])
    expect_error(seg_folder(tmp_path), rf"^{truncated}: cannot read {what} file \(image file is truncated.*\); "
                                       "replace or remove it$")
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not PNG data, just text " * 4)
    expect_error(seg_folder(tmp_path), rf"^{corrupt}: not a readable {what} file \(PIL cannot identify its format")
