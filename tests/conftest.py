"""Suite-wide set-up."""
import importlib.util
import os
from pathlib import Path

import pytest

# Before torch is imported: idle OpenMP threads sleep instead of spinning, so tests that run beside
# servers or subprocesses on a 2-core CI machine do not slow each other down several-fold.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def hub_checkpoint(tmp_path_factory):
    """``hub_checkpoint(family)``: the path of a tiny checkpoint of that family laid out like a Hub
    download (built once per session; see tests/common/models/hub_families.py)."""
    spec = importlib.util.spec_from_file_location("hub_families", Path(__file__).parent / "common/models/hub_families.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = module.make_checkpoint(family, tmp_path_factory.mktemp(family))
        return made[family]

    get.families = module.FAMILIES
    return get
