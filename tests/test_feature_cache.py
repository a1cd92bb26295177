"""The feature cache seen from `evaluate`: hits and misses are counted (results["encoded"]), never timed."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from clipzs import pipeline
from clipzs.cache import CorruptCacheWarning
from clipzs.cli import main
from clipzs.ensemble import METHODS
from clipzs.pipeline import evaluate
from clipzs.prompts import load_templates


@pytest.fixture
def run(tiny_config, tiny_checkpoint, cifar_root, tmp_path):
    cache = tmp_path / "features"

    def run(**options):
        kwargs = dict(
            model=str(tiny_config),
            pretrained=str(tiny_checkpoint),
            data_root=cifar_root,
            feature_cache=cache,
            progress=False,
        )
        return evaluate(**{**kwargs, **options})

    run.cache = cache
    return run


def _metrics(results):
    return [results["single"], results["ensembles"], results["best"]]


def test_second_run_encodes_nothing_and_gives_identical_results(run):
    first, second = run(sweep=True), run(sweep=True)
    assert first["encoded"] == {"images": 40, "prompts": 500}
    assert second["encoded"] == {"images": 0, "prompts": 0}
    assert _metrics(first) == _metrics(second)
    assert _metrics(run(sweep=True, use_cache=False)) == _metrics(first)


def test_a_new_template_encodes_only_its_prompts(run, tmp_path):
    run()
    six = tmp_path / "six.txt"
    six.write_text("\n".join([*load_templates("seed"), "a blurry photo of a {}."]))
    results = run(templates=str(six), sweep=True)
    assert results["encoded"] == {"images": 0, "prompts": 100}
    assert len(results["ensembles"]) == 63 * len(METHODS)


def test_other_precision_or_images_are_other_entries(run):
    run(limit=20)
    assert run(limit=30)["encoded"]["images"] == 30
    assert run(limit=30, precision="bf16")["encoded"] == {"images": 30, "prompts": 500}


def test_no_cache_writes_nothing(run):
    run(use_cache=False)
    assert not run.cache.exists() or not any(run.cache.rglob("*.npy"))


def test_a_corrupted_chunk_is_detected_and_recomputed(run, monkeypatch):
    monkeypatch.setattr(pipeline, "CHUNK", 16)
    first = run()
    chunk = sorted(run.cache.rglob("chunk-*.npy"))[1]
    data = bytearray(chunk.read_bytes())
    data[-5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning):
        again = run()
    assert again["encoded"]["images"] == 16
    assert _metrics(again) == _metrics(first)


KILLED_RUN = """
    import sys, time
    import clipzs.cache, clipzs.pipeline
    clipzs.pipeline.CHUNK = 8
    write = clipzs.cache.ImageEntry.write
    def slow_write(self, start, features):
        write(self, start, features)
        print("wrote", start, flush=True)
        time.sleep(0.3)
    clipzs.cache.ImageEntry.write = slow_write
    clipzs.pipeline.evaluate(model=sys.argv[1], pretrained=sys.argv[2], data_root=sys.argv[3],
                             feature_cache=sys.argv[4], progress=False, batch_size=4)
    print("finished", flush=True)
"""


def test_a_run_killed_mid_encoding_resumes_to_identical_results(
    run, tiny_config, tiny_checkpoint, cifar_root, monkeypatch
):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [str(tiny_config), str(tiny_checkpoint), str(cifar_root), str(run.cache)]
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_RUN), *args], stdout=subprocess.PIPE, text=True, env=env
    )
    written = 0
    for line in child.stdout:
        written += line.startswith("wrote")
        if written == 2:
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    monkeypatch.setattr(pipeline, "CHUNK", 8)
    resumed = run(batch_size=4)
    assert 0 < resumed["encoded"]["images"] <= 40 - 16
    assert resumed["encoded"]["prompts"] == 0
    assert _metrics(resumed) == _metrics(run(use_cache=False))


def test_cache_list_and_clear_by_model(run, tmp_path, capsys):
    run()
    assert main(["cache", "list", "--feature-cache", str(run.cache)]) == 0
    listing = capsys.readouterr().out
    assert "images" in listing and "40/40" in listing and "500" in listing and "2 entries" in listing
    assert main(["cache", "clear", "--model", "some-other-model", "--feature-cache", str(run.cache)]) == 0
    assert "removed 0 B" in capsys.readouterr().out
    assert run()["encoded"] == {"images": 0, "prompts": 0}
    model = run()["model"]
    assert main(["cache", "clear", "--model", model, "--feature-cache", str(run.cache)]) == 0
    assert "removed 0 B" not in capsys.readouterr().out
    assert run()["encoded"] == {"images": 40, "prompts": 500}
