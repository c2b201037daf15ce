"""An out_dir (or the run directory `sparsetrain export` writes into) that the run must not or cannot write into is
refused in one line before anything is written (trial 17): another run's export folder or a folder inside another
run, and a read-only run directory (a `[rank0]: OSError: [Errno 30] Read-only file system` traceback before)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsetrain.cli import main
from sparsetrain.pipeline import run_pipeline
from tests.core.conftest import tiny_config, tiny_overrides
from tests.helpers.cli_checks import one_error_line, read_only_mount

ONE_EPOCH = ("phases.sparsify.epochs=1", "report.accuracy_curve=false")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny digits run (one epoch per phase) with its export."""
    out = tmp_path_factory.mktemp("runs") / "first"
    run_pipeline(tiny_config(out, *ONE_EPOCH))
    return out


def _listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def test_an_out_dir_that_is_an_export_folder_or_inside_a_run_is_refused(run: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """Before: `out_dir=OTHER_RUN/export` trained a new run into the other run's export folder."""
    before = _listing(run)
    assert main(["run", *tiny_overrides(run / "export", *ONE_EPOCH)]) == 2
    assert one_error_line(capsys) == (f"error: out_dir: {run / 'export'} is an export folder (it holds "
                                       "architecture.json), not a run directory; give a folder of its own for the "
                                       "run's outputs")
    inside = run / "weights" / "new"
    assert main(["run", *tiny_overrides(inside, *ONE_EPOCH)]) == 2
    assert one_error_line(capsys) == (f"error: out_dir: {inside} lies inside the run directory {run} (it holds "
                                       f"state.json); give a folder outside it, e.g. out_dir={run}-2")
    assert _listing(run) == before, "the other run is left as it was"

    copy = tmp_path / "shipped"  # an export folder on its own, away from its run
    shutil.copytree(run / "export", copy)
    assert main(["run", *tiny_overrides(copy, *ONE_EPOCH)]) == 2
    assert "is an export folder (it holds architecture.json)" in one_error_line(capsys)
    assert not (copy / "config.yaml").exists()


@pytest.fixture
def read_only_run(run: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the finished run, bind-mounted read-only (chmod does not stop root; a read-only mount does)."""
    source = tmp_path / "source"
    shutil.copytree(run, source)
    with read_only_mount(source, tmp_path / "ro") as mounted:
        yield mounted


def test_a_read_only_run_directory_is_one_line_for_export_and_run(read_only_run: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["export", str(read_only_run)]) == 2
    assert one_error_line(capsys) == (f"error: export: cannot write into the run directory {read_only_run} "
                                       "(Read-only file system); give a writable folder")
    assert main(["run", *tiny_overrides(read_only_run, *ONE_EPOCH)]) == 2
    assert one_error_line(capsys) == (f"error: out_dir: cannot write into the run directory {read_only_run} "
                                       "(Read-only file system); give a writable folder")
