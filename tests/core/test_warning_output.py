"""Python warnings in a sparsetrain process (`sparsetrain.warning_output`): each once per process, even when something
empties Python's once-per-location registry (a subprocess does, as DeepSpeed's CPU accelerator starts one per ZeRO-3
step); deprecations on rank 0 only; torch's deprecation of the collectives DeepSpeed calls not at all."""

from __future__ import annotations

import subprocess
import warnings

import pytest
import torch.distributed

from sparsetrain import warning_output


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[warnings.WarningMessage]:
    """The warnings shown after `install()` (recorded where they would be printed), restored afterwards."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setattr(warning_output, "_shown", set())
    monkeypatch.delenv("RANK", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.resetwarnings()
        warnings.simplefilter("default")  # Python's own: once per location
        warning_output.install()
        yield seen


def _warn_each_step(text: str, category: type[Warning], steps: int = 3) -> None:
    for _ in range(steps):
        warnings.warn(text, category, stacklevel=1)  # one location
        subprocess.run(["true"], check=True)  # os.get_exec_path's catch_warnings empties the registry


def test_a_warning_raised_every_step_is_shown_once(shown: list[warnings.WarningMessage]) -> None:
    _warn_each_step("a library's note", UserWarning)
    _warn_each_step("a library's deprecation", FutureWarning)
    assert [(w.category, str(w.message)) for w in shown] == [(UserWarning, "a library's note"),
                                                              (FutureWarning, "a library's deprecation")]


def test_installing_twice_still_shows_once(shown: list[warnings.WarningMessage]) -> None:
    warning_output.install()
    _warn_each_step("a library's note", UserWarning)
    assert len(shown) == 1, [str(w.message) for w in shown]


def test_deprecations_on_rank_0_only(shown: list[warnings.WarningMessage], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    _warn_each_step("regularizer.kernel=autograd is deprecated", FutureWarning)
    _warn_each_step("an old call", DeprecationWarning)
    _warn_each_step("this rank's own note", UserWarning)
    assert [str(w.message) for w in shown] == ["this rank's own note"]


@pytest.mark.parametrize("collective", ["all_gather_into_tensor", "reduce_scatter_tensor"])
def test_torch_deprecation_of_the_collectives_deepspeed_calls_is_not_shown(
        shown: list[warnings.WarningMessage], collective: str) -> None:
    text = getattr(torch.distributed, collective).__deprecated__  # torch's own message (typing_extensions.deprecated)
    _warn_each_step(text, FutureWarning)
    _warn_each_step("`torch.distributed.all_reduce_coalesced` is deprecated", FutureWarning, steps=1)
    assert [str(w.message) for w in shown] == ["`torch.distributed.all_reduce_coalesced` is deprecated"]


def test_a_deprecation_is_one_warning_line() -> None:
    line = warning_output.one_line_warning(FutureWarning("x.y is deprecated; use x.z"), FutureWarning, "f.py", 3)
    assert line == "warning: x.y is deprecated; use x.z\n"
    assert "UserWarning" in warning_output.one_line_warning(UserWarning("note"), UserWarning, "f.py", 3)
