import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import helpers  # noqa: E402


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    return helpers.write_config(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="session")
def tiny_state(tiny_config):
    return helpers.random_state_dict(tiny_config)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    helpers.write_cifar100(root)
    return root
