"""The export's colour record says what is true of the ImageFolder it was trained on, and eval says when the images
it scores are of another colour kind (a gray copy of a colour-trained set)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsetrain.cli import main
from tests.core.conftest import tiny_overrides
from tests.helpers.image_tree import write_image_tree


def test_the_record_of_an_all_colour_tree_says_no_gray_file_was_repeated_and_eval_warns_on_gray_copies(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Trial 25: an RGB tree's export said `gray files repeated to 3 channels` (it holds no gray file), and the
    same model scored 56.25 on a gray copy of its val split against 66.67, without a word."""
    colour = write_image_tree(tmp_path / "rgb", classes=2, per_class=(6, 4), side=8)
    gray = write_image_tree(tmp_path / "gray", classes=2, per_class=(6, 4), side=8, gray=True)
    run = tmp_path / "run"
    assert main(["run", *tiny_overrides(run, "data.source=imagefolder", f"data.path={colour}", "data.image_size=8",
                                        "phases.sparsify.epochs=1", "train.batch_size=4")]) == 0
    record = json.loads((run / "export" / "architecture.json").read_text())["meta"]["preprocessing"]["color"]
    assert record == {"applied": "any gray file repeated to 3 channels; any colour file as stored",
                      "gray_weights": None, "files": "colour"}, record
    capsys.readouterr()
    assert main(["eval", str(run), f"data.path={gray}", "deploy.latency=false"]) == 0
    warned = [line.split(" ", 1)[1] for line in capsys.readouterr().err.splitlines() if "trained on" in line]
    assert warned == [f"warning: data.path: the test images of {gray} are gray, but the model was trained on colour "
                      "images (its export's record; both from a sample of file headers): its metric here may be "
                      "lower than on images like its training data"], warned
    assert main(["eval", str(run), "deploy.latency=false"]) == 0  # its own data: no word
    assert "trained on" not in capsys.readouterr().err
