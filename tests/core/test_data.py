"""Users' data on disk: npz layouts and ImageFolder trees, and the one-line errors for bad data."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetrain.config.schema import DataConfig, ModelConfig
from sparsetrain.data import DataError, build_data
from sparsetrain.models.factory import build_model


def _write_npz(path: Path, **overrides: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (40, 12, 12), dtype=np.uint8), "y_train": rng.integers(0, 4, 40),
              "x_test": rng.integers(0, 256, (10, 12, 12), dtype=np.uint8), "y_test": rng.integers(0, 4, 10)}
    arrays.update(overrides)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_npz_uint8_nhw_and_float_nchw(tmp_path: Path) -> None:
    bundle = build_data(DataConfig(source="npz", path=str(_write_npz(tmp_path / "a.npz")), normalize=False), 0)
    x, _ = bundle.train[0]
    assert bundle.input_shape == (1, 12, 12) and bundle.num_classes == 4
    assert x.dtype == torch.float32 and 0.0 <= float(x.min()) and float(x.max()) <= 1.0, "uint8 not scaled to [0,1]"
    rgb = np.random.default_rng(1).random((40, 3, 8, 8), dtype=np.float32)
    path = _write_npz(tmp_path / "b.npz", x_train=rgb, x_test=rgb[:10])
    assert build_data(DataConfig(source="npz", path=str(path)), 0).input_shape == (3, 8, 8)


@pytest.mark.parametrize("overrides, message", [
    ({"y_test": None}, "lacks array(s) y_test"),
    ({"y_test": np.full(10, 9)}, "array y_test has label 9 out of range [0, 4)"),
    ({"y_train": np.full(40, -1)}, "array y_train has label -1 out of range"),
    ({"x_train": np.zeros((40, 5), np.uint8)}, "array x_train must be N×C×H×W or N×H×W"),
    ({"y_train": np.zeros(39, np.int64)}, "array y_train must be 1-D with 40 labels"),
    ({"x_test": np.zeros((10, 11, 11), np.uint8)}, "x_train samples are (1, 12, 12) but x_test samples are"),
    ({"x_train": np.zeros((40, 32, 32, 3), np.uint8)},
     "data.path: array x_train has shape (40, 32, 32, 3), which looks channels-last (N×H×W×C); sparsetrain reads "
     "N×C×H×W: save x_train.transpose(0, 3, 1, 2)"),
    ({"x_test": np.zeros((10, 12, 12, 1), np.float32)}, "array x_test has shape (10, 12, 12, 1), which looks"),
])
def test_npz_errors(tmp_path: Path, overrides: dict, message: str) -> None:
    path = _write_npz(tmp_path / "bad.npz", **overrides)
    with pytest.raises(DataError) as info:
        build_data(DataConfig(source="npz", path=str(path)), 0)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_npz_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.path: file not found"):
        build_data(DataConfig(source="npz", path=str(tmp_path / "nope.npz")), 0)


def _npz_error(path: Path) -> str:
    with pytest.raises(DataError) as info:
        build_data(DataConfig(source="npz", path=str(path)), 0)
    assert "\n" not in str(info.value) and str(info.value).startswith("data.path: "), str(info.value)
    return str(info.value)


def test_npz_path_that_is_not_an_npz_archive(tmp_path: Path) -> None:
    (tmp_path / "garbage.npz").write_bytes(bytes(range(256)) * 4)  # numpy would talk about allow_pickle
    assert "garbage.npz is not an .npz archive (expected the zip file np.savez writes" in _npz_error(
        tmp_path / "garbage.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    assert "one.npy is not an .npz archive" in _npz_error(tmp_path / "one.npy")
    objects = _write_npz(tmp_path / "objects.npz", y_test=np.array([1, "a"], dtype=object))
    assert "objects.npz is not a readable .npz file (it holds object arrays" in _npz_error(objects)
    assert f"{tmp_path} is a folder; data.source=npz reads one .npz file" in _npz_error(tmp_path)


def test_model_that_does_not_fit_the_data() -> None:
    with pytest.raises(ValueError, match=r"model.name: lenet5 does not accept inputs of shape \(3, 6, 6\)|too small"):
        build_model(ModelConfig(name="lenet5"), 3, 10, (3, 6, 6))
    with pytest.raises(ValueError, match="model.name: unknown timm model 'not_a_model'"):
        build_model(ModelConfig(name="not_a_model"), 1, 10, (1, 8, 8))


def test_imagefolder_tree(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=16), 0)
    x, y = bundle.train[4]
    assert bundle.num_classes == 2 and x.shape == (3, 16, 16) and y == 1 and len(bundle.test) == 6
    prep = bundle.preprocessing  # what the export records: torchvision's ImageNet statistics, resize, RGB
    assert prep["mean"] == [0.485, 0.456, 0.406] and prep["std"] == [0.229, 0.224, 0.225]
    assert prep["resize"] == {"size": [16, 16], "interpolation": "bilinear", "antialias": True, "mode": "squash",
                              "by": "torch interpolate via torchvision Resize"}
    assert prep["color"]["applied"] == "any gray file repeated to 3 channels; any colour file as stored"
    assert prep["scale"] == 1 / 255
    assert bundle.classes == ("cat", "dog"), "class names in torchvision's index order (sorted folder names)"
    model = build_model(ModelConfig(name="resnet18"), 3, 2, bundle.input_shape)
    assert model.eval()(x[None]).shape == (1, 2)


def test_imagefolder_path_that_is_a_file(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "a.npz")
    with pytest.raises(DataError, match=f"data.path: {path} is a file; data.source=imagefolder reads a folder"):
        build_data(DataConfig(source="imagefolder", path=str(path)), 0)


def test_imagefolder_missing_split(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "a" / "0.png")
    with pytest.raises(DataError, match="needs one of the subfolders val, test"):
        build_data(DataConfig(source="imagefolder", path=str(tmp_path)), 0)


def test_imagefolder_classes_that_differ_are_named(tmp_path: Path) -> None:
    from PIL import Image

    classes = {"train": ["ant", "bee", "cat", "dog", "eel"], "val": ["ant", "bee", "cat", "dog", "eel", "fox"]}
    for split, names in classes.items():
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (4, 4)).save(tmp_path / split / name / "0.png")
    with pytest.raises(DataError) as info:
        build_data(DataConfig(source="imagefolder", path=str(tmp_path)), 0)
    assert str(info.value) == "data.path: class folders differ between train/ and val/: only in val/: fox"
    from sparsetrain.data.disk import class_difference

    letters = list("abcdefgh")
    assert class_difference({"train/": letters, "test/": ["a", "z"]}) == ("only in train/: b, c, d, e, f, …; "
                                                                          "only in test/: z")


def test_builtin_sources_are_deterministic() -> None:
    for source in ("digits", "mnist1d", "synthetic"):
        a = build_data(DataConfig(source=source, num_samples=200), 5)
        b = build_data(DataConfig(source=source, num_samples=200), 5)
        assert torch.equal(a.train.inputs, b.train.inputs), f"{source}: not deterministic for a fixed seed"


def _gray_tree(root: Path, side: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (side, side), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.png")
    return root


def test_imagefolder_in_chans_1_gives_gray_inputs_and_model(tmp_path: Path) -> None:
    bundle = build_data(DataConfig(source="imagefolder", path=str(_gray_tree(tmp_path, 12)), image_size=12,
                                   in_chans=1), 0)
    x, _ = bundle.train[0]
    assert bundle.in_chans == 1 and bundle.input_shape == (1, 12, 12) and x.shape == (1, 12, 12)
    assert bundle.preprocessing["color"]["gray_weights"] == [0.2989, 0.587, 0.114]
    assert len(bundle.preprocessing["mean"]) == 1
    model = build_model(ModelConfig(name="resnet18"), bundle.in_chans, 2, bundle.input_shape)
    assert model.eval()(x[None]).shape == (1, 2)
    with pytest.raises(DataError, match="data.in_chans: ImageFolder images are read as RGB .3. or gray .1., got 2"):
        build_data(DataConfig(source="imagefolder", path=str(tmp_path), in_chans=2), 0)


def test_npz_in_chans_repeats_gray(tmp_path: Path) -> None:
    bundle = build_data(DataConfig(source="npz", path=str(_write_npz(tmp_path / "a.npz")), in_chans=3), 0)
    x, _ = bundle.train[0]
    assert bundle.in_chans == 3 and x.shape == (3, 12, 12) and torch.equal(x[0], x[2])


def test_imagefolder_warns_when_images_are_much_smaller(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _gray_tree(tmp_path, 10)
    with caplog.at_level("WARNING"):
        build_data(DataConfig(source="imagefolder", path=str(root), image_size=40), 0)
    warned = [r.getMessage() for r in caplog.records if "data.image_size" in r.getMessage()]
    assert len(warned) == 1 and "images are 10×10" in warned[0] and "data.image_size=10" in warned[0], warned
    caplog.clear()
    with caplog.at_level("WARNING"):
        build_data(DataConfig(source="imagefolder", path=str(root), image_size=20), 0)
    assert not [r for r in caplog.records if "data.image_size" in r.getMessage()]


# ------------------------------------------------------------------------------------------- image files on disk


def _tree(root: Path, pixels: dict[str, list[np.ndarray]], splits: tuple[str, ...] = ("train", "val")) -> Path:
    """An ImageFolder tree root/<split>/<class>/<i>.png of the given arrays (uint8 or uint16, PIL picks the mode)."""
    from PIL import Image

    for split in splits:
        for label, images in pixels.items():
            (root / split / label).mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(images):
                Image.fromarray(image).save(root / split / label / f"{i}.png")
    return root


def _sixteen_bit(seed: int) -> dict[str, list[np.ndarray]]:
    """Two classes of 16-bit gray 8×8 images: dim (1,000-3,000) and bright (30,000-50,000)."""
    rng = np.random.default_rng(seed)
    return {label: [rng.integers(low, high, (8, 8)).astype(np.uint16) for _ in range(2)]
            for label, (low, high) in (("bright", (30_000, 50_000)), ("dim", (1_000, 3_000)))}


@pytest.mark.parametrize("in_chans", [1, 3])
def test_imagefolder_16bit_gray_is_scaled_by_its_depth_not_clipped(tmp_path: Path, in_chans: int) -> None:
    """PIL's convert('RGB') clipped every 16-bit pixel to 255: both classes were all-white images."""
    from PIL import Image

    root = _tree(tmp_path, _sixteen_bit(0))
    bundle = build_data(DataConfig(source="imagefolder", path=str(root), image_size=8, normalize=False,
                                   in_chans=in_chans), 0)
    prep = bundle.preprocessing
    assert prep["scale"] == 1 / 65535 and "16-bit" in prep["raw"], prep
    for index, (file, _) in enumerate(bundle.train.samples):  # the export's formula on the raw file
        raw = np.asarray(Image.open(file)).astype(np.float64)
        x, _ = bundle.train[index]
        assert x.shape == (in_chans, 8, 8)
        np.testing.assert_allclose(x.numpy(), np.broadcast_to(raw * prep["scale"], x.shape), atol=1e-6,
                                   err_msg=f"{file}: training input is not raw * recorded scale")
    bright, dim = (float(bundle.train[i][0].mean()) for i in (0, 2))
    assert bright > 0.4 and dim < 0.05, (bright, dim)


def test_imagefolder_8bit_inputs_and_grayscale_mix(tmp_path: Path) -> None:
    """8-bit colour files: raw * 1/255; in_chans=1 mixes them with the luma weights (torchvision's Grayscale)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = _tree(tmp_path, {c: [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)] for c in ("a", "b")})
    rgb = build_data(DataConfig(source="imagefolder", path=str(root), image_size=8, normalize=False), 0)
    gray = build_data(DataConfig(source="imagefolder", path=str(root), image_size=8, normalize=False, in_chans=1), 0)
    raw = np.asarray(Image.open(rgb.train.samples[0][0])).astype(np.float64).transpose(2, 0, 1) / 255
    assert rgb.preprocessing["scale"] == 1 / 255
    np.testing.assert_allclose(rgb.train[0][0].numpy(), raw, atol=1e-6)
    np.testing.assert_allclose(gray.train[0][0].numpy()[0], np.tensordot([0.2989, 0.587, 0.114], raw, 1), atol=1e-6)


def test_imagefolder_mixed_bit_depths_are_refused_naming_two_files(tmp_path: Path) -> None:
    from PIL import Image

    root = _tree(tmp_path, _sixteen_bit(0))
    eight = root / "val" / "dim" / "1.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(eight)
    bundle = build_data(DataConfig(source="imagefolder", path=str(root), image_size=8), 0)
    with pytest.raises(DataError) as info:
        bundle.test[3]
    assert str(info.value) == (f"data.path: {eight} is a 8-bit image but {root / 'train' / 'bright' / '0.png'} is "
                               "16-bit; save all images with one bit depth (the export records one input scale, "
                               "1/255 or 1/65535, for every image)")



def _colour16(seed: int, chans: int = 3) -> np.ndarray:
    """8×8 16-bit colour pixels whose low byte matters: high byte 100-140, low byte anything (0-255)."""
    rng = np.random.default_rng(seed)
    return (rng.integers(100, 140, (8, 8, chans)) * 256 + rng.integers(0, 256, (8, 8, chans))).astype(np.uint16)


def test_imagefolder_16bit_colour_png_is_read_at_full_depth(tmp_path: Path) -> None:
    """Pillow opens 48-bit (RGB) and 64-bit (RGBA) PNGs as 8-bit RGB/RGBA, the low byte dropped: the tree was read
    as 8-bit × 1/255 and the record said so."""
    from tests.helpers.png16 import write_png16

    raws = {}
    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            for i, chans in enumerate((3, 4)):  # RGB and RGBA (alpha dropped)
                raws[write_png16(tmp_path / split / label / f"{i}.png", _colour16(seed * 2 + i, chans))] = chans
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8, normalize=False), 0)
    prep = bundle.preprocessing
    assert prep["scale"] == 1 / 65535 and "16-bit pixels 0-65535 read as stored" in prep["raw"], prep
    assert "torchvision.io.decode_png" in prep["raw"], prep["raw"]
    for index, (file, _) in enumerate(bundle.train.samples):  # the export's formula on the pixels written
        chans = raws[Path(file)]
        raw = _colour16(("a", "b").index(Path(file).parent.name) * 2 + (chans - 3), chans)[..., :3]
        x, _ = bundle.train[index]
        np.testing.assert_allclose(x.numpy(), raw.transpose(2, 0, 1) * prep["scale"], atol=1e-6, rtol=0,
                                   err_msg=f"{file}: training input is not raw * recorded scale")


def test_imagefolder_16bit_colour_mixed_with_8bit_is_refused(tmp_path: Path) -> None:
    """Read as 8-bit, a 48-bit PNG passed for an 8-bit file: a tree mixing them was accepted, one scale for both."""
    from PIL import Image

    from tests.helpers.png16 import write_png16

    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            write_png16(tmp_path / split / label / "0.png", _colour16(seed))
    eight = tmp_path / "val" / "b" / "1.png"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(eight)
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8), 0)
    bundle.test[0], bundle.test[1]  # the 16-bit files are read
    with pytest.raises(DataError) as info:
        bundle.test[2]
    assert str(info.value) == (f"data.path: {eight} is a 8-bit image but {tmp_path / 'train' / 'a' / '0.png'} is "
                               "16-bit; save all images with one bit depth (the export records one input scale, "
                               "1/255 or 1/65535, for every image)")



def test_imagefolder_damaged_16bit_png_is_a_one_line_error_not_a_crash(tmp_path: Path) -> None:
    """torchvision's decode_png dies of a segfault on a chunk CRC or zlib error while reading rows: PIL checks the
    file first, so the error names it like any damaged file."""
    from tests.helpers.png16 import write_png16

    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            write_png16(tmp_path / split / label / "0.png", _colour16(seed))
    crc, truncated = tmp_path / "train" / "b" / "0.png", tmp_path / "val" / "b" / "0.png"
    data = bytearray(crc.read_bytes())
    data[data.index(b"IDAT") + 8] ^= 0xFF  # a byte of the zlib stream: IDAT's CRC no longer matches
    crc.write_bytes(bytes(data))
    truncated.write_bytes(truncated.read_bytes()[:-40])
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8), 0)
    with pytest.raises(DataError) as info:
        bundle.train[1]
    assert str(info.value) == (f"{crc}: cannot read image file (broken PNG file (bad header checksum in b'IDAT')); "
                               "replace or remove it")
    with pytest.raises(DataError, match=rf"^{truncated}: cannot read image file \(.*\); replace or remove it$"):
        bundle.test[1]


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the pixel decodes of the real decoders (spies that call them): PIL's `ImageFile.load` when it has data
    left to decode, torchvision's `decode_png`, tifffile's `TiffPage.asarray`."""
    import tifffile
    import torchvision.io
    from PIL import ImageFile

    counts = {"PIL": 0, "decode_png": 0, "tifffile": 0}
    load, decode_png, asarray = ImageFile.ImageFile.load, torchvision.io.decode_png, tifffile.TiffPage.asarray

    def counted_load(self: ImageFile.ImageFile) -> object:
        counts["PIL"] += bool(self.tile)  # a call on a loaded image decodes nothing
        return load(self)

    def counted(name: str, function: object) -> object:
        def call(*args: object, **kwargs: object) -> object:
            counts[name] += 1
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted_load)
    monkeypatch.setattr(torchvision.io, "decode_png", counted("decode_png", decode_png))
    monkeypatch.setattr(tifffile.TiffPage, "asarray", counted("tifffile", asarray))
    return counts


@pytest.mark.parametrize("kind", ["gray-png", "colour-png", "colour-tiff"])
def test_16bit_depth_scan_decodes_nothing_and_a_read_decodes_once(tmp_path: Path, kind: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The depth scan (`image_scale`) reads a PNG's IHDR or a TIFF's tags, no pixels; a read decodes a 16-bit gray PNG
    once (PIL's I;16 keeps the 16 bits), a colour one by PIL's guard (libpng crashes on damaged files) then
    decode_png. Before: a gray one was decoded twice too (PIL's guard, then decode_png), and opened four times."""
    from sparsetrain.data.images import image_scale, read_image
    from tests.helpers.png16 import write_png16
    from tests.helpers.tiff16 import write_tiff16

    chans = 1 if kind == "gray-png" else 3
    write = write_tiff16 if kind == "colour-tiff" else write_png16
    raws = {write(tmp_path / f"{i}.{kind[-3:]}", _colour16(i, chans)): _colour16(i, chans) for i in range(10)}
    counts = _count_decodes(monkeypatch)
    assert {image_scale(file) for file in raws} == {1 / 65535}
    assert counts == {"PIL": 0, "decode_png": 0, "tifffile": 0}, f"the depth scan decoded pixels: {counts}"
    for file, raw in raws.items():
        pixels, _ = read_image(file)
        np.testing.assert_array_equal(np.rint(pixels * 65535), raw, err_msg=f"{file}: not read at full depth")
    expected = {"gray-png": {"PIL": 10, "decode_png": 0, "tifffile": 0},
                "colour-png": {"PIL": 10, "decode_png": 10, "tifffile": 0},
                "colour-tiff": {"PIL": 0, "decode_png": 0, "tifffile": 10}}[kind]
    assert counts == expected, f"decodes of 10 files: {counts}"


# tifffile.imwrite keywords of 16-bit TIFF flavours (write_tiff16) and the channel count written
TIFF16_FLAVOURS = {"rgb": (3, {}), "rgba": (4, {}), "planar-rgb": (3, {"planarconfig": "separate"}),
                   "deflate-predictor-rgb": (3, {"compression": "zlib", "predictor": True}), "gray-alpha": (2, {})}


@pytest.mark.parametrize("flavour", list(TIFF16_FLAVOURS))
def test_imagefolder_16bit_colour_tiff_is_read_at_full_depth(tmp_path: Path, flavour: str) -> None:
    """Pillow opens 16-bit RGB(A) TIFFs (interleaved or planar) as 8-bit RGB, the low byte dropped: the tree was read
    as 8-bit × 1/255 and the record said so; it cannot identify 16-bit gray + alpha ones at all."""
    from tests.helpers.tiff16 import write_tiff16

    chans, options = TIFF16_FLAVOURS[flavour]
    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            write_tiff16(tmp_path / split / label / "0.tif", _colour16(seed, chans), **options)
    in_chans = 3 if chans >= 3 else 1
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8, normalize=False,
                                   in_chans=in_chans), 0)
    prep = bundle.preprocessing
    assert prep["scale"] == 1 / 65535 and "colour TIFFs by tifffile" in prep["raw"], prep
    for index, (file, _) in enumerate(bundle.train.samples):  # the export's formula on the pixels written
        raw = _colour16(("a", "b").index(Path(file).parent.name), chans)[..., :in_chans]
        x, _ = bundle.train[index]
        np.testing.assert_allclose(x.numpy(), raw.transpose(2, 0, 1) * prep["scale"], atol=1e-6, rtol=0,
                                   err_msg=f"{file}: training input is not raw * recorded scale")


def test_imagefolder_16bit_colour_tiff_mixed_with_8bit_is_refused(tmp_path: Path) -> None:
    """Read as 8-bit, a 48-bit TIFF passed for an 8-bit file: a tree mixing them was accepted, one scale for both."""
    from PIL import Image

    from tests.helpers.tiff16 import write_tiff16

    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            write_tiff16(tmp_path / split / label / "0.tif", _colour16(seed))
    eight = tmp_path / "val" / "b" / "1.tif"
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(eight)
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8), 0)
    bundle.test[0], bundle.test[1]  # the 16-bit files are read
    with pytest.raises(DataError) as info:
        bundle.test[2]
    assert str(info.value) == (f"data.path: {eight} is a 8-bit image but {tmp_path / 'train' / 'a' / '0.tif'} is "
                               "16-bit; save all images with one bit depth (the export records one input scale, "
                               "1/255 or 1/65535, for every image)")


def test_imagefolder_16bit_min_is_white_tiff_is_inverted_like_8bit_ones(tmp_path: Path) -> None:
    """PIL inverts an 8-bit min-is-white TIFF (stored 0 is white) but gives a 16-bit one as stored: the image was
    read as its negative."""
    from tests.helpers.tiff16 import write_tiff16

    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            write_tiff16(tmp_path / split / label / "0.tif", _colour16(seed, 1), photometric="miniswhite")
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8, normalize=False,
                                   in_chans=1), 0)
    assert bundle.preprocessing["scale"] == 1 / 65535
    for index, (file, _) in enumerate(bundle.train.samples):
        raw = 65535 - _colour16(("a", "b").index(Path(file).parent.name), 1)
        np.testing.assert_allclose(bundle.train[index][0].numpy(), raw.transpose(2, 0, 1) / 65535, atol=1e-6, rtol=0,
                                   err_msg=f"{file}: min-is-white pixels not inverted")


def _tiff_flavour(path: Path, flavour: str) -> None:
    """A 16-bit-or-wider TIFF sparsetrain refuses: one it cannot read, or one it would read wrong."""
    from tests.helpers.tiff16 import set_compression, write_tiff16

    colour = _colour16(0)
    if flavour == "lzw":  # the most common TIFF codec; tifffile decodes it only with imagecodecs
        set_compression(write_tiff16(path, colour), 5)
    elif flavour == "float":
        write_tiff16(path, colour.astype(np.float32) / 65535)
    elif flavour == "signed":
        write_tiff16(path, colour.astype(np.int16))
    elif flavour == "cmyk":
        write_tiff16(path, _colour16(0, 4), photometric="separated", extrasamples=[])
    elif flavour == "channels":  # three gray samples (e.g. microscopy channels), not RGB
        write_tiff16(path, colour, photometric="minisblack")
    elif flavour == "truncated":
        write_tiff16(path, colour)
        path.write_bytes(path.read_bytes()[:-200])


TIFF_REFUSALS = {
    "lzw": "16-bit TIFF stored with LZW, which tifffile decodes only with the imagecodecs package: pip install "
           "imagecodecs, or save it uncompressed or with deflate (zlib) compression",
    "float": "TIFF of 32-bit float samples (3 per pixel); sparsetrain reads 8-bit and 16-bit unsigned images: save it "
             "as a 16-bit PNG or TIFF (e.g. round(x * 65535) for values in [0, 1])",
    "signed": "TIFF of 16-bit signed integer samples (3 per pixel); sparsetrain reads 8-bit and 16-bit unsigned "
              "images: save it as a 16-bit PNG or TIFF (e.g. round(x * 65535) for values in [0, 1])",
    "cmyk": "16-bit TIFF in the SEPARATED colour space; sparsetrain reads gray and RGB images: save it as RGB",
    "channels": "16-bit TIFF of shape (8, 8, 3) (axes YXS, 3 samples per pixel); sparsetrain reads one gray or RGB "
                "image per file, optionally with an alpha sample",
    "truncated": r"cannot read image file \(failed to read \d+ bytes, got \d+\); replace or remove it",  # a pattern
}


@pytest.mark.parametrize("flavour", list(TIFF_REFUSALS))
def test_imagefolder_tiff_it_cannot_read_is_one_line_naming_it(tmp_path: Path, flavour: str) -> None:
    """Each was read by Pillow as 8-bit RGB (the low byte dropped, or LZW run over raw data), or was PIL's
    'cannot identify' that said nothing of what to do."""
    from tests.helpers.tiff16 import write_tiff16

    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            write_tiff16(tmp_path / split / label / "0.tif", _colour16(seed))
    bad = tmp_path / "val" / "b" / "0.tif"
    _tiff_flavour(bad, flavour)
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8), 0)
    bundle.test[0]
    with pytest.raises(DataError) as info:
        bundle.test[1]
    expected = TIFF_REFUSALS[flavour] if flavour == "truncated" else re.escape(TIFF_REFUSALS[flavour])
    assert re.fullmatch(f"{re.escape(str(bad))}: {expected}", str(info.value)), str(info.value)


@pytest.mark.parametrize("depth", [8, 16])
def test_imagefolder_multipage_tiff_is_refused_naming_file_and_pages(tmp_path: Path, depth: int) -> None:
    """Seen: a 3-page TIFF (a stack) was read as its first page without a word (PIL's and torchvision's default).
    One image per file is what ImageFolder and seg_folder mean, so the file is refused with its page count; a
    pyramid's reduced-resolution page is a view of the first image and is still read as that image."""
    import tifffile

    from sparsetrain.data.images import image_dimensions, read_image

    pages = [_colour16(k) if depth == 16 else (_colour16(k) >> 8).astype(np.uint8) for k in range(3)]
    for split in ("train", "val"):
        for seed, label in enumerate(("a", "b")):
            (tmp_path / split / label).mkdir(parents=True)
            tifffile.imwrite(tmp_path / split / label / "0.tif", pages[seed], photometric="rgb")
    stack = tmp_path / "val" / "b" / "0.tif"
    with tifffile.TiffWriter(stack) as tif:
        for page in pages:
            tif.write(page, photometric="rgb")
    bundle = build_data(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8), 0)
    bundle.test[0]
    expected = (f"{stack}: multi-page TIFF (3 full-resolution pages); sparsetrain reads one image per file, where PIL "
                "and torchvision would take the first page only: save each page you mean as a file of its own "
                "(tifffile.imread(path, key=k) reads page k)")
    for read in (lambda: bundle.test[1], lambda: read_image(stack), lambda: image_dimensions(stack)):
        with pytest.raises(DataError) as info:
            read()
        assert str(info.value) == expected
    pyramid = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(pyramid) as tif:
        tif.write(pages[0], photometric="rgb")
        tif.write(pages[0][::2, ::2], photometric="rgb", subfiletype=1)  # reduced-resolution level
    pixels, scale = read_image(pyramid)
    assert pixels.shape == (8, 8, 3) and scale == (1 / 65535 if depth == 16 else 1 / 255)
    np.testing.assert_allclose(pixels, pages[0] * scale, atol=1e-6, rtol=0, err_msg="not the first page's pixels")


def _damage(root: Path) -> tuple[Path, Path]:
    """Make train/b/0.png a PNG signature followed by junk and train/b/1.png a truncated PNG."""
    corrupt, truncated = root / "train" / "b" / "0.png", root / "train" / "b" / "1.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not PNG data, just text " * 4)
    truncated.write_bytes(truncated.read_bytes()[:-30])
    return corrupt, truncated


def test_imagefolder_damaged_files_are_one_line_data_errors_naming_them(tmp_path: Path) -> None:
    """ImageFolder files are read lazily, per batch: the loader turns PIL's errors into DataError with the path."""
    rng = np.random.default_rng(0)
    root = _tree(tmp_path, {c: [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(2)] for c in "ab"})
    corrupt, truncated = _damage(root)
    bundle = build_data(DataConfig(source="imagefolder", path=str(root), image_size=8), 0)
    with pytest.raises(DataError) as info:
        bundle.train[2]
    assert str(info.value) == (f"{corrupt}: not a readable image file (PIL cannot identify its format: corrupt, or "
                               "not an image); replace or remove it")
    with pytest.raises(DataError, match=rf"^{truncated}: cannot read image file \(image file is truncated.*\); "
                                        "replace or remove it$"):
        bundle.train[3]


def test_data_error_in_a_dataloader_worker_keeps_its_one_line_message(tmp_path: Path) -> None:
    """DataLoader re-raises a worker's error with the worker's traceback as message; the file must stay named."""
    from sparsetrain.engine.batches import BatchPlan, iterate_micro_batches

    rng = np.random.default_rng(0)
    root = _tree(tmp_path, {c: [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(2)] for c in "ab"})
    _, truncated = _damage(root)
    bundle = build_data(DataConfig(source="imagefolder", path=str(root), image_size=8), 0)
    plan = BatchPlan(num_samples=4, global_batch=4, world_size=1, rank=0, grad_accum=1, seed=0)
    bundle.train.samples[2] = bundle.train.samples[3]  # only the truncated file is damaged now
    with pytest.raises(DataError, match=rf"^{truncated}: cannot read image file \(image file is truncated"):
        list(iterate_micro_batches(bundle.train, plan, 0, 1, num_workers=1))


def test_imagefolder_empty_class_folder_names_the_folder_and_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    root = _tree(tmp_path, {c: [rng.integers(0, 256, (8, 8), dtype=np.uint8)] for c in ("a", "b", "c")})
    for file in (root / "val" / "b").iterdir():
        file.unlink()
    (root / "val" / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError) as info:
        build_data(DataConfig(source="imagefolder", path=str(root)), 0)
    assert str(info.value) == (f"data.path: class folder {root / 'val' / 'b'} of val/ holds no image file (.jpg, "
                               ".jpeg, .png, .ppm, .bmp, .pgm, .tif, .tiff, .webp); every class folder of train/ and "
                               "val/ needs at least one image: add images or remove the folder from both")


def test_truncated_imagefolder_file_is_a_one_line_cli_error(tmp_path: Path) -> None:
    """Before: an 89-line [rank0] traceback ending `OSError: image file is truncated`, exit 1, the file never named."""
    from tests.core.subprocess_runs import run_cli

    rng = np.random.default_rng(0)
    root = _tree(tmp_path / "data", {c: [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(4)] for c in "ab"})
    _, truncated = _damage(root)
    (root / "train" / "b" / "0.png").unlink()  # only the truncated file is damaged
    result = run_cli(["configs/quickstart.yaml", "data.source=imagefolder", f"data.path={root}", "data.image_size=8",
                      "data.in_chans=1", "data.num_workers=1", "train.batch_size=6", "tracking.mode=disabled",
                      "train.threads=1", f"out_dir={tmp_path / 'run'}"])
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (f"error: {truncated}: cannot read image file (image file is "
                                                      "truncated); replace or remove it"), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_an_empty_training_split_names_the_field_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Trial 17: `data.test_fraction=0.9999` (or an npz with an empty x_train) ended in `error: zero-size array to
    reduction operation maximum which has no identity`, naming no field."""
    from sparsetrain.cli import main
    from tests.core.conftest import tiny_overrides

    empty = _write_npz(tmp_path / "empty.npz", x_train=np.zeros((0, 12, 12), np.uint8), y_train=np.zeros(0, np.int64))
    cases = [(["data.test_fraction=0.9999"], "error: data.test_fraction: 0.9999 of the 1797 samples leaves no training "
              "sample; expected a smaller fraction that keeps at least one (the default is 0.2)"),
             (["data.source=npz", f"data.path={empty}"], f"error: data.path: array x_train of {empty} holds no samples "
              "(shape (0, 1, 12, 12)); expected at least one training sample")]
    for extra, expected in cases:
        assert main(["run", *tiny_overrides(tmp_path / "run", *extra)]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert errors == [expected], errors
    assert not (tmp_path / "run").exists(), "refused before the run directory is made"
