"""MNIST-family IDX folders (read by torchvision's readers), training subsets, and real Fashion-MNIST."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetrain.config import ConfigError, load_config
from sparsetrain.config.schema import DataConfig, TrainSubsetConfig
from sparsetrain.data import DataError, build_data, subset_indices
from sparsetrain.data.idx import read_idx

REPO = Path(__file__).resolve().parents[2]


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Test fixture writer: big-endian IDX header (magic 0x08 = uint8, ndim) + dims + raw bytes, gzip if .gz."""
    payload = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    (gzip.open if path.suffix == ".gz" else open)(path, "wb").write(payload)
    return path


def make_folder(root: Path, n_train: int = 30, n_test: int = 10, suffix: str = ".gz", prefix: str = "",
                test_name: str = "t10k", side: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3": rng.integers(0, 256, (n_train, side, side)), "train-labels-idx1":
              rng.integers(0, 10, n_train), f"{test_name}-images-idx3": rng.integers(0, 256, (n_test, side, side)),
              f"{test_name}-labels-idx1": rng.integers(0, 10, n_test)}
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(root / f"{prefix}{stem}-ubyte{suffix}", array)
    return arrays


@pytest.mark.parametrize("suffix, prefix, test_name", [(".gz", "", "t10k"), ("", "", "t10k"),
                                                       (".gz", "emnist-digits-", "test")])
def test_idx_folder_matches_the_written_arrays(tmp_path: Path, suffix: str, prefix: str, test_name: str) -> None:
    arrays = make_folder(tmp_path, suffix=suffix, prefix=prefix, test_name=test_name)
    x_train, y_train, x_test, y_test = read_idx(str(tmp_path)).arrays
    upright = (lambda a: a.transpose(0, 2, 1)) if prefix.startswith("emnist-") else (lambda a: a)  # data.transpose
    assert x_train.shape == (30, 1, 8, 8) and x_train.dtype == np.float32, f"x_train {x_train.shape} {x_train.dtype}"
    np.testing.assert_array_equal(np.round(x_train[:, 0] * 255), upright(arrays["train-images-idx3"]), "train images")
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1"], "train labels")
    np.testing.assert_array_equal(np.round(x_test[:, 0] * 255), upright(arrays[f"{test_name}-images-idx3"]),
                                  "test images")
    np.testing.assert_array_equal(y_test, arrays[f"{test_name}-labels-idx1"], "test labels")
    bundle = build_data(DataConfig(source="idx", path=str(tmp_path)), 0)
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (30, 10, (1, 8, 8))


def _one_line_error(path: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        build_data(DataConfig(source="idx", path=str(path), **kwargs), 0)
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.path: "), f"not a one-line data.path error: {message!r}"
    return message


def test_missing_idx_file_names_the_file(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    message = _one_line_error(tmp_path)
    assert f"{tmp_path} lacks t10k-labels-idx1-ubyte[.gz]" in message, message
    assert "folder not found" in _one_line_error(tmp_path / "nowhere")
    message = _one_line_error(tmp_path / "train-images-idx3-ubyte.gz")  # the path exists: a file, not the folder
    assert "train-images-idx3-ubyte.gz is a file; data.source=idx reads the folder" in message, message
    assert message.endswith(f"e.g. {tmp_path}"), message
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not an IDX file")
    message = _one_line_error(tmp_path / "other" / "notes.txt")  # no IDX files beside it: no folder to suggest
    assert message.endswith("set data.path to that folder"), message


def test_empty_idx_folder_names_every_missing_file(tmp_path: Path) -> None:
    message = _one_line_error(tmp_path)
    for name in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        assert f"{name}-ubyte[.gz]" in message.split(" (an IDX folder")[0], message


def test_mismatched_counts_name_both_files(tmp_path: Path) -> None:
    make_folder(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(29))
    message = _one_line_error(tmp_path)
    assert "train-images-idx3-ubyte.gz holds 30 images but train-labels-idx1-ubyte.gz holds 29 labels" in message


def test_unreadable_and_ambiguous_files(tmp_path: Path) -> None:
    make_folder(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    assert "t10k-images-idx3-ubyte.gz is not a readable IDX images file" in _one_line_error(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(10))  # 1-D: a label file in an image slot
    assert "is not a readable IDX images file (x should have 3 dimension" in _one_line_error(tmp_path)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((10, 8, 8)))
    assert "holds several t10k-images-idx3 files" in _one_line_error(tmp_path)


def test_label_beyond_num_classes(tmp_path: Path) -> None:
    make_folder(tmp_path)
    with pytest.raises(DataError, match=r"has label 9 out of range \[0, 5\)"):
        build_data(DataConfig(source="idx", path=str(tmp_path)), 0, num_classes=5)


def test_train_subset_parts_are_disjoint_and_cover_the_set(tmp_path: Path) -> None:
    parts = [subset_indices(101, TrainSubsetConfig(parts=3, part=k, seed=4)) for k in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(101)), "parts do not partition the indices"
    assert [len(p) for p in parts] == [34, 34, 33], f"part sizes {[len(p) for p in parts]}"
    again = subset_indices(101, TrainSubsetConfig(parts=3, part=1, seed=4))
    assert np.array_equal(parts[1], again), "the partition is not a function of its seed"
    assert not np.array_equal(parts[1], subset_indices(101, TrainSubsetConfig(parts=3, part=1, seed=5)))
    arrays = make_folder(tmp_path, n_train=40)
    half = build_data(DataConfig(source="idx", path=str(tmp_path), normalize=False, train_subset={"part": 1}), 0)
    keep = subset_indices(40, TrainSubsetConfig(part=1))
    assert len(half.train) == 20 and len(half.test) == 10, "the subset must cut the training set only"
    assert torch.equal(half.train.targets, torch.from_numpy(arrays["train-labels-idx1"][keep])), "wrong samples"


def test_train_subset_parts_smaller_than_a_batch_are_refused_by_the_dry_run(tmp_path: Path) -> None:
    """2000 parts of digits' 1,438 training samples leave a part 1 sample: refused at the dry run in one line naming
    the field and the largest count that works, before a torch std() warning on that one sample (the run itself
    used to blame train.batch_size for exceeding '1 training samples')."""
    from tests.core.subprocess_runs import cli_command, run_command

    out = tmp_path / "run"
    result = run_command([*cli_command(["data.train_subset.parts=2000", "tracking.mode=disabled",
                                        f"out_dir={out}"]), "--dry-run"])
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr and "std()" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: data.train_subset.parts: 2000 parts of the 1438 training samples leave part 0 1 sample, fewer than "
        "train.batch_size 128; expected at most 11 (each part then holds 128 or more)"], result.stderr
    assert "memory plan" not in result.stdout and not out.exists(), result.stdout


def test_train_subset_parts_smaller_than_the_classes_or_any_batch() -> None:
    """The part must hold a batch and every class once; when not even two parts can hold a batch, the line says
    which batch size does (or to leave the subset out)."""
    digits = {"source": "digits", "train_subset": {"parts": 200}}
    with pytest.raises(DataError, match=r"^data.train_subset.parts: 200 parts of the 1438 training samples leave part "
                       r"0 8 samples, fewer than the 10 classes of the training set; expected at most 143 \(each "
                       r"part then holds 10 or more\)$"):
        build_data(DataConfig(**digits), 0, batch_size=4)
    assert len(build_data(DataConfig(**{**digits, "train_subset": {"parts": 143, "part": 142}}), 0,
                          batch_size=10).train) == 10, "the largest count named must work"
    with pytest.raises(DataError, match=r"; even 2 parts cannot hold 1000 each: set train.batch_size=719 or less, "
                       r"or leave out data.train_subset$"):
        build_data(DataConfig(source="digits", train_subset={"parts": 2}), 0, batch_size=1000)


def test_train_subset_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"^data.train_subset: part 2 is out of range for parts=2 \(expected 0..1\)$"):
        load_config(None, ["data.train_subset.part=2"])
    with pytest.raises(ConfigError, match=r"^data.path: required for data.source='idx'$"):
        load_config(None, ["data.source=idx"])
    assert load_config(None, ["data.train_subset.part=1"]).data.train_subset.parts == 2


def test_real_fashion_mnist(fashion_mnist: Path) -> None:
    bundle = build_data(DataConfig(source="idx", path=str(fashion_mnist), normalize=False), 0)
    assert (len(bundle.train), len(bundle.test), bundle.input_shape, bundle.num_classes) == (60000, 10000,
                                                                                            (1, 28, 28), 10)
    assert bundle.train.targets.bincount().tolist() == [6000] * 10, "Fashion-MNIST has 6,000 train images a class"
    assert bundle.test.targets.bincount().tolist() == [1000] * 10
    x = bundle.train.inputs
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0 and 0.2 < float(x.mean()) < 0.4, "pixel scale"


def _asymmetric_folder(root: Path, prefix: str, suffix: str, test_name: str) -> dict[str, np.ndarray]:
    """An IDX folder of 5×7 images (H ≠ W, so a transpose changes the shape too) with labels 0..3."""
    rng = np.random.default_rng(1)
    arrays = {"train-images-idx3": rng.integers(0, 256, (12, 5, 7)), "train-labels-idx1": np.arange(12) % 4,
              f"{test_name}-images-idx3": rng.integers(0, 256, (4, 5, 7)), f"{test_name}-labels-idx1": np.arange(4)}
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_idx(root / f"{prefix}{stem}-ubyte{suffix}", array)
    return arrays


def _orientation_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("data.transpose")]


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_emnist_images_are_transposed_to_upright(tmp_path: Path, suffix: str,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    arrays = _asymmetric_folder(tmp_path, "emnist-letters-", suffix, "test")
    with caplog.at_level("INFO", logger="sparsetrain"):
        bundle = build_data(DataConfig(source="idx", path=str(tmp_path), normalize=False), 0)
    stored_train, stored_test = arrays["train-images-idx3"], arrays["test-images-idx3"]
    assert bundle.input_shape == (1, 7, 5), f"EMNIST 5×7 images must reach the model as 7×5, got {bundle.input_shape}"
    np.testing.assert_array_equal(torch.round(bundle.train.inputs[:, 0] * 255).numpy(), stored_train.transpose(0, 2, 1),
                                  "the training tensor is not the transpose of the stored EMNIST images")
    np.testing.assert_array_equal(torch.round(bundle.test.inputs[:, 0] * 255).numpy(), stored_test.transpose(0, 2, 1),
                                  "the test tensor is not the transpose of the stored EMNIST images")
    names = f"emnist-letters-train-images-idx3-ubyte{suffix} and emnist-letters-test-images-idx3-ubyte{suffix}"
    assert _orientation_lines(caplog) == [
        f"data.transpose=auto: EMNIST stores its images transposed; those of {names} are transposed back (H and W "
        "swapped) on read, so the model sees them upright (data.transpose=false keeps them as stored)"], caplog.text
    assert bundle.preprocessing["raw"].endswith(f", each image of {names} transposed (H and W swapped)"), \
        bundle.preprocessing["raw"]
    caplog.clear()
    with caplog.at_level("INFO", logger="sparsetrain"):
        stored = build_data(DataConfig(source="idx", path=str(tmp_path), normalize=False, transpose=False), 0)
    np.testing.assert_array_equal(torch.round(stored.train.inputs[:, 0] * 255).numpy(), stored_train,
                                  "data.transpose=false must keep EMNIST images as stored")
    assert ["used as stored, transposed" in line for line in _orientation_lines(caplog)] == [True], caplog.text


def test_mnist_images_are_kept_unless_transpose_is_set(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrays = _asymmetric_folder(tmp_path, "", ".gz", "t10k")
    with caplog.at_level("INFO", logger="sparsetrain"):
        bundle = build_data(DataConfig(source="idx", path=str(tmp_path), normalize=False), 0)
    assert bundle.input_shape == (1, 5, 7), bundle.input_shape
    np.testing.assert_array_equal(torch.round(bundle.train.inputs[:, 0] * 255).numpy(), arrays["train-images-idx3"],
                                  "MNIST-named images must be used as stored")
    assert _orientation_lines(caplog) == [] and bundle.preprocessing["raw"] == "IDX image files, uint8 pixels 0-255"
    turned = build_data(DataConfig(source="idx", path=str(tmp_path), normalize=False, transpose=True), 0)
    np.testing.assert_array_equal(torch.round(turned.test.inputs[:, 0] * 255).numpy(),
                                  arrays["t10k-images-idx3"].transpose(0, 2, 1), "data.transpose=true on MNIST files")


def test_transpose_setting_is_idx_only() -> None:
    assert load_config(None, ["data.source=idx", "data.path=x", "data.transpose=false"]).data.transpose is False
    assert load_config(None, ["data.source=idx", "data.path=x", "data.transpose=true"]).data.transpose is True
    with pytest.raises(ConfigError, match=r"^data.transpose: read by data.source=idx only, not 'digits'$"):
        load_config(None, ["data.transpose=true"])


def test_emnist_download_folder_picks_a_split_by_prefix(tmp_path: Path) -> None:
    """The EMNIST download unpacks every split into one folder: the error names data.idx_prefix and the splits."""
    letters = make_folder(tmp_path, prefix="emnist-letters-", test_name="test", n_train=26)
    make_folder(tmp_path, prefix="emnist-balanced-", test_name="test", n_train=47, suffix="")
    message = _one_line_error(tmp_path)
    assert message == (f"data.path: {tmp_path} holds several train-images-idx3 files: set data.idx_prefix to one of "
                       "emnist-balanced, emnist-letters"), message
    for prefix in ("emnist-letters", "emnist-letters-"):
        bundle = build_data(DataConfig(source="idx", path=str(tmp_path), idx_prefix=prefix), 0)
        assert len(bundle.train) == 26, f"idx_prefix={prefix!r} read {len(bundle.train)} training images"
        assert torch.equal(bundle.train.targets, torch.from_numpy(letters["train-labels-idx1"])), "wrong split read"
    assert len(build_data(DataConfig(source="idx", path=str(tmp_path), idx_prefix="emnist-balanced"), 0).train) == 47
    make_folder(tmp_path, n_train=5)  # unprefixed MNIST files beside them: '' picks those
    assert len(build_data(DataConfig(source="idx", path=str(tmp_path), idx_prefix=""), 0).train) == 5
    with pytest.raises(DataError) as info:
        build_data(DataConfig(source="idx", path=str(tmp_path), idx_prefix="emnist-digits"), 0)
    assert str(info.value) == (f"data.idx_prefix: {tmp_path} holds no emnist-digits-* IDX files; set data.idx_prefix "
                               "to one of '' (no prefix), emnist-balanced, emnist-letters"), str(info.value)
    (tmp_path / "emnist-letters-test-labels-idx1-ubyte.gz").unlink()
    message = _one_line_error(tmp_path, idx_prefix="emnist-letters")
    assert f"{tmp_path} lacks emnist-letters-t10k-labels-idx1-ubyte[.gz] (" in message, message
    message = _one_line_error(tmp_path / "emnist-letters-train-images-idx3-ubyte.gz")
    assert message.endswith(f"set data.path to that folder, e.g. {tmp_path} with data.idx_prefix=emnist-letters"), \
        message


def test_idx_prefix_setting_is_idx_only() -> None:
    assert load_config(None, ["data.source=idx", "data.path=x", "data.idx_prefix=emnist-letters"]).data.idx_prefix \
        == "emnist-letters"
    with pytest.raises(ConfigError, match=r"^data.idx_prefix: read by data.source=idx only, not 'npz'$"):
        load_config(None, ["data.source=npz", "data.path=x.npz", "data.idx_prefix=emnist-letters"])


def test_letters_labels_from_one_say_label_zero_is_untrained(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """EMNIST letters labels are 1..26: 27 outputs, label 0 without a sample, said in one line, not remapped."""
    root = tmp_path / "letters"
    root.mkdir()
    rng = np.random.default_rng(2)
    for split, n in (("train", 26), ("test", 8)):
        write_idx(root / f"emnist-letters-{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 6, 6)))
        write_idx(root / f"emnist-letters-{split}-labels-idx1-ubyte.gz", np.arange(n) % 26 + 1)
    with caplog.at_level("INFO", logger="sparsetrain"):
        bundle = build_data(DataConfig(source="idx", path=str(root)), 0)
    assert bundle.num_classes == 27 and int(bundle.train.targets.min()) == 1, "labels must be used as stored"
    assert bundle.classes is None, "an IDX folder without a mapping file names no classes (export classes: null)"
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert lines == ["data: 27 classes (labels 0-26, one model output each); label 0 has no training sample (0 test "
                     "samples): labels are used as stored, so that output is never trained to fire (EMNIST letters: "
                     "labels 1-26, none 0)"], lines
    caplog.clear()
    with caplog.at_level("INFO", logger="sparsetrain"):
        build_data(DataConfig(source="idx", path=str(root), train_subset={"parts": 13}), 0)  # 2 of 26 samples
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: ")]
    assert len(lines) == 1 and lines[0].startswith("data: 27 classes (labels 0-26, one model output each); 25 labels "
                                                   "(0, "), f"the class count must not shrink with the subset: {lines}"
    assert ", …) have no training sample (" in lines[0] and "those outputs are never" in lines[0], lines
    caplog.clear()
    with caplog.at_level("INFO", logger="sparsetrain"):
        build_data(DataConfig(source="idx", path=str(tmp_path / "letters"), idx_prefix="emnist-letters"), 0,
                   num_classes=27)
    assert sum(r.getMessage().startswith("data: ") for r in caplog.records) == 1
    caplog.clear()
    make_folder(tmp_path / "mnist", n_train=40)
    with caplog.at_level("INFO", logger="sparsetrain"):
        build_data(DataConfig(source="idx", path=str(tmp_path / "mnist")), 0)
    assert not [r for r in caplog.records if r.getMessage().startswith("data: ")], "every label has a sample: no line"


def _letters_folder(root: Path, mapping: str | None) -> Path:
    """An EMNIST letters split as its download unpacks it (labels 1-26) beside a balanced one (labels 0-9 here),
    with `emnist-letters-mapping.txt` holding `mapping` (none when None)."""
    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 26), ("test", 8)):
        write_idx(root / f"emnist-letters-{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 6, 6)))
        write_idx(root / f"emnist-letters-{split}-labels-idx1-ubyte.gz", np.arange(n) % 26 + 1)
    make_folder(root, prefix="emnist-balanced-", test_name="test")
    if mapping is not None:
        (root / "emnist-letters-mapping.txt").write_text(mapping)
    return root


LETTERS_MAPPING = "".join(f"{label} {64 + label} {96 + label}\n" for label in range(1, 27))  # EMNIST's: "1 65 97"


def test_emnist_mapping_file_names_the_classes_in_the_export(tmp_path: Path) -> None:
    """An EMNIST split's classes are characters its mapping file gives; the export said classes: null."""
    from sparsetrain.data.base import output_record

    root = _letters_folder(tmp_path, LETTERS_MAPPING)
    bundle = build_data(DataConfig(source="idx", path=str(root), idx_prefix="emnist-letters"), 0)
    assert bundle.num_classes == 27
    assert bundle.classes == ("N/A", *(upper + upper.lower() for upper in "ABCDEFGHIJKLMNOPQRSTUVWXYZ")), \
        bundle.classes
    assert output_record("classification", 27, bundle.classes)["classes"][:3] == ["N/A", "Aa", "Bb"]
    (root / "emnist-balanced-mapping.txt").write_text("".join(f"{d} {48 + d}\n" for d in range(10)))
    balanced = build_data(DataConfig(source="idx", path=str(root), idx_prefix="emnist-balanced"), 0)
    assert balanced.classes == tuple("0123456789"), balanced.classes
    make_folder(tmp_path / "mnist")
    (tmp_path / "mnist" / "emnist-letters-mapping.txt").write_text(LETTERS_MAPPING)  # not the folder's split
    assert build_data(DataConfig(source="idx", path=str(tmp_path / "mnist")), 0).classes is None


@pytest.mark.parametrize(("line", "detail"), [
    ("3 x", "expected a label and the ASCII code of its character (e.g. '0 48', or '1 65 97' for 'Aa'), got '3 x'"),
    ("3", "expected a label and the ASCII code of its character (e.g. '0 48', or '1 65 97' for 'Aa'), got '3'"),
    ("3 300", "expected a label and the ASCII code of its character (e.g. '0 48', or '1 65 97' for 'Aa'), got "
              "'3 300'"),
    ("2 66 98", "label 2 given twice"),
], ids=["not-a-code", "no-code", "not-ascii", "label-twice"])
def test_malformed_emnist_mapping_is_one_line_naming_file_and_line(tmp_path: Path, line: str, detail: str) -> None:
    lines = LETTERS_MAPPING.splitlines()
    lines.insert(2, line)
    root = _letters_folder(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataError) as info:
        build_data(DataConfig(source="idx", path=str(root), idx_prefix="emnist-letters"), 0)
    assert str(info.value) == f"data.path: {root / 'emnist-letters-mapping.txt'} line 3: {detail}"
