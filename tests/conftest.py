import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The tests' models and tensors are tiny: a second thread only adds synchronisation (and, on a busy machine,
# waits for a core), so the tests and the processes they start use one.
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))
# The fixtures import `helpers` (torch, open_clip) when they first run: pytest-xdist's controller loads this file
# too, and runs no test.


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    import helpers

    return helpers.write_config(tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="session")
def tiny_state(tiny_config):
    import helpers

    return helpers.random_state_dict(tiny_config)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    import helpers

    root = tmp_path_factory.mktemp("data")
    helpers.write_cifar100(root)
    return root


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_state) -> Path:
    """The tiny model as OpenAI ships checkpoints: a TorchScript archive with fp16 weights."""
    import helpers

    return helpers.save_torchscript_fp16(tiny_state, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(autouse=True)
def private_caches(tmp_path_factory, monkeypatch):
    """No test reads or writes the user's caches: features, checkpoints and the Hugging Face hub cache go to
    fresh folders."""
    from huggingface_hub import constants

    monkeypatch.setenv("CLIPZS_FEATURE_CACHE", str(tmp_path_factory.mktemp("features")))
    monkeypatch.setenv("CLIPZS_CACHE", str(tmp_path_factory.mktemp("checkpoints")))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hub")))


@pytest.fixture
def tiny_args(tiny_config, tiny_checkpoint, cifar_root) -> list[str]:
    """CLI options that point any command at the tiny model and the CIFAR-format test data."""
    return [
        "--model",
        str(tiny_config),
        "--pretrained",
        str(tiny_checkpoint),
        "--data-root",
        str(cifar_root),
        "--quiet",
    ]


def pytest_collection_modifyitems(items):
    """The Ray module last: pytest-xdist gives each worker whole modules, in this order."""
    items.sort(key=lambda item: item.path.name == "test_ray.py")
