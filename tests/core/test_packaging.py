"""Packaging metadata: pyproject.toml applies without setuptools deprecation warnings (the install log stays
clean), with the licence as an SPDX expression (PEP 639) and a build requirement that understands it."""

from __future__ import annotations

import warnings
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version
from setuptools.config.pyprojecttoml import apply_configuration, read_configuration
from setuptools.dist import Distribution

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_applies_without_deprecation_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # setuptools' BuildBackend/SetuptoolsDeprecationWarning become failures
        dist = apply_configuration(Distribution(), PYPROJECT)
    assert dist.metadata.license_expression == "Apache-2.0"


def test_build_requirement_supports_spdx_license() -> None:
    requires = read_configuration(PYPROJECT, expand=False)["build-system"]["requires"]
    setuptools = next(Requirement(r) for r in requires if Requirement(r).name == "setuptools")
    assert Version("76.9") not in setuptools.specifier, "an SPDX project.license needs setuptools>=77"
