"""Test tiers run in order: unit (pure), integration (real queue + storage), e2e (Airflow...).

Every test gets a private HOME so task-queue and CloudVolume read no real secrets.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Mark each test with its tier (its folder) and run the tiers in order."""
    def tier(item) -> int:
        parts = Path(str(item.fspath)).relative_to(REPO / "tests").parts
        return TIERS.index(parts[0]) if parts[0] in TIERS else 0

    for item in items:
        item.add_marker(getattr(pytest.mark, TIERS[tier(item)]))
    items.sort(key=tier)


@pytest.fixture(autouse=True)
def private_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CLOUD_VOLUME_DIR", str(home / ".cloudvolume"))
    pythonpath = os.environ.get("PYTHONPATH", "")
    monkeypatch.setenv("PYTHONPATH", f"{REPO}{os.pathsep}{pythonpath}" if pythonpath else str(REPO))
    return home


@pytest.fixture
def python() -> str:
    return sys.executable
