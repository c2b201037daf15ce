"""README "Python API": its block runs as shown, in a fresh process (cwd with the repository's configs/), and the
package exports the three functions lazily."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import sparsetrain
from tests.core.subprocess_runs import REPO, clean_env


def _readme_block() -> str:
    section = (REPO / "README.md").read_text().split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_python_api_block_runs_as_shown(tmp_path: Path) -> None:
    (tmp_path / "configs").symlink_to(REPO / "configs")
    done = subprocess.run([sys.executable, "-c", _readme_block()], capture_output=True, text=True, cwd=tmp_path,
                          timeout=900, env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "runs" / "api" / "report.json").read_text())
    printed = done.stdout.splitlines()  # the run's own summary table, then the block's two prints
    metric, sparsity = printed[-2].split()
    assert float(metric) == report["phases"]["finetune"]["metric"] and float(sparsity) == report["sparsity"]
    assert printed[-1].startswith("tensor(["), done.stdout


def test_package_exports_the_api_lazily() -> None:
    from sparsetrain.config import load_config

    assert {"load_config", "run_pipeline", "load_compressed"} <= set(sparsetrain.__all__)
    assert sparsetrain.load_config.__doc__ and sparsetrain.run_pipeline.__doc__
    cfg = sparsetrain.load_config(None, ["out_dir=x"])
    assert cfg == load_config(None, ["out_dir=x"])
    code = "import sys, sparsetrain; print(sorted(m for m in ('torch', 'timm', 'deepspeed') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean_env())
    assert done.stdout.strip() == "[]", "import sparsetrain must stay light"
