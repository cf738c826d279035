"""Shared test fixtures. Real DFT data lives in ../shared/data relative to the project root
(override with the EQTB_SHARED_DATA environment variable)."""

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EQTB_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.fail(f"shared DFT data not found at {DATA}")
    return DATA
