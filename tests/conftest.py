import os
from pathlib import Path

import pytest


@pytest.fixture
def shared_data() -> Path:
    """../shared/data beside the repository (benchmark files; never copied into the repo)."""
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not path.is_dir():
        if os.environ.get("STEER_REQUIRE_SHARED") == "1":
            pytest.fail(f"STEER_REQUIRE_SHARED=1 but {path} is missing; put the benchmark files "
                        "there (<name>/test.jsonl) or unset STEER_REQUIRE_SHARED")
        pytest.skip("../shared/data not found beside the repository; benchmark-file tests need it")
    return path
