"""Shared test setup: `import reference` / `import seed_examples` from tests/, and one compile
cache for the whole session (every spec compiles once, however many tests use it)."""
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))


@pytest.fixture(scope="session")
def build_dir(tmp_path_factory):
    """A build directory shared by the session: identical specs hit the cache."""
    return tmp_path_factory.mktemp("cnncc-build")
