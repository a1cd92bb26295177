"""The feature cache seen from `evaluate`: hits and misses are counted (`run.encoded`), never timed."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import helpers
import numpy as np
import pytest
from PIL import Image
from wds_helpers import encode as encode_image
from wds_helpers import write_wds

from clipzs import encode, encoding
from clipzs.cache import CorruptCacheWarning
from clipzs.cli import main
from clipzs.ensemble import METHODS
from clipzs.pipeline import evaluate
from clipzs.prompts import load_templates
from clipzs.sources.cifar import load_cifar


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
            templates="seed",
        )
        return evaluate(**{**kwargs, **options})

    run.cache, run.model, run.pretrained = cache, tiny_config, tiny_checkpoint
    return run


def _metrics(result):
    return [result.single, result.ensembles, result.best]


def test_second_run_encodes_nothing_and_gives_identical_results(run):
    first, second = run(sweep=True), run(sweep=True)
    assert first.run.encoded == {"images": 40, "prompts": 500}
    assert second.run.encoded == {"images": 0, "prompts": 0}
    assert _metrics(first) == _metrics(second)
    uncached = run(sweep=True, use_cache=False)
    assert uncached.run.encoded == {"images": 40, "prompts": 500}
    assert _metrics(uncached) == _metrics(first)


def test_a_new_template_encodes_only_its_prompts(run, tmp_path):
    run()
    six = tmp_path / "six.txt"
    six.write_text("\n".join([*load_templates("seed"), "a blurry photo of a {}."]))
    result = run(templates=str(six), sweep=True)
    assert result.run.encoded == {"images": 0, "prompts": 100}
    assert len(result.ensembles) == 63 * len(METHODS)


def test_other_precision_or_images_are_other_entries(run):
    run(limit=20)
    assert run(limit=30).run.encoded["images"] == 30
    assert run(limit=30, precision="bf16").run.encoded == {"images": 30, "prompts": 500}


def test_no_cache_writes_nothing(run):
    run(use_cache=False)
    assert not run.cache.exists() or not any(run.cache.rglob("*.npy"))


def _small_chunks(monkeypatch, size: int) -> None:
    monkeypatch.setattr(encoding, "CHUNK_IMAGES", size)
    monkeypatch.setattr(encode, "CHUNK_IMAGES", size)


def test_a_corrupted_chunk_is_detected_and_recomputed(run, monkeypatch):
    _small_chunks(monkeypatch, 16)
    first = run()
    chunks = sorted(run.cache.rglob("chunk-*.npy"))
    assert len(chunks) == 3  # 16 + 16 + 8 images
    data = bytearray(chunks[1].read_bytes())
    data[-5] ^= 0xFF
    chunks[1].write_bytes(bytes(data))
    with pytest.warns(CorruptCacheWarning):
        again = run()
    assert again.run.encoded["images"] == 16
    assert _metrics(again) == _metrics(first)


# The child stops after its second chunk and waits to be killed: no timing, no race.
KILLED_RUN = """
    import sys
    import clipzs.cache, clipzs.encode, clipzs.encoding, clipzs.pipeline
    clipzs.encode.CHUNK_IMAGES = clipzs.encoding.CHUNK_IMAGES = 8
    write = clipzs.cache.ImageEntry.write
    def paced_write(self, start, *args, **kwargs):
        write(self, start, *args, **kwargs)
        print("wrote", start, flush=True)
        sys.stdin.readline()  # the next chunk waits for the parent, which may kill this run instead
    clipzs.cache.ImageEntry.write = paced_write
    clipzs.pipeline.evaluate(model=sys.argv[1], pretrained=sys.argv[2], data_root=sys.argv[3],
                             feature_cache=sys.argv[4], dataset=sys.argv[5], progress=False, templates="seed",
                             batch_size=4)
    print("finished", flush=True)
"""


def _kill_after_two_chunks(run, data_root, dataset: str) -> None:
    """Run an evaluation in a child with chunks of 8 images and SIGKILL it once it has stored two."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = [str(run.model), str(run.pretrained), str(data_root), str(run.cache), dataset]
    child = subprocess.Popen(
        [sys.executable, "-c", helpers.AS_INSTALLED + textwrap.dedent(KILLED_RUN), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout.readline() == "wrote 0\n"  # the first chunk is stored and the child waits
    child.stdin.write("go\n")
    child.stdin.flush()
    assert child.stdout.readline() == "wrote 8\n"  # the second one too: kill it before a third
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=60)
    child.stdin.close()
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def test_a_run_killed_mid_encoding_resumes_to_identical_results(run, cifar_root, monkeypatch):
    _kill_after_two_chunks(run, cifar_root, "cifar100")
    _small_chunks(monkeypatch, 8)
    resumed = run(batch_size=4)
    assert resumed.run.encoded == {"images": 40 - 16, "prompts": 0}
    assert _metrics(resumed) == _metrics(run(use_cache=False))


@pytest.fixture
def wds_dataset(tmp_path, cifar_root):
    """The 40 CIFAR-format test images as CLIP_benchmark's webdataset shards (lossless PNG), with the raw names."""
    images = load_cifar("cifar100", cifar_root)
    samples = [(f"s{i:03d}", "png", encode_image(images.pixels[i]), int(images.labels[i])) for i in range(40)]
    return write_wds(tmp_path / "wds", samples, [16, 16, 8], list(images.classes))


def test_the_same_images_give_the_same_results_through_wds_and_the_cifar_reader(run, wds_dataset):
    cifar = run(sweep=True, classnames="raw")
    shards = run(sweep=True, classnames="raw", dataset="wds", data_root=wds_dataset)
    assert shards.run.encoded == {"images": 40, "prompts": 0}  # the same prompts, read from the cache
    assert shards.run.classes == cifar.run.classes
    assert _metrics(shards) == _metrics(cifar)


def test_a_wds_run_killed_mid_encoding_resumes_without_encoding_its_chunks_again(run, wds_dataset, monkeypatch):
    _kill_after_two_chunks(run, wds_dataset, "wds")
    _small_chunks(monkeypatch, 8)
    resumed = run(dataset="wds", data_root=wds_dataset, batch_size=4)
    assert resumed.run.encoded == {"images": 40 - 16, "prompts": 0}
    assert _metrics(resumed) == _metrics(run(dataset="wds", data_root=wds_dataset, use_cache=False))


def test_an_edited_model_config_is_another_model_to_the_cache(run, tmp_path):
    config = tmp_path / "edited.json"
    config.write_text(run.model.read_text())
    assert run(model=str(config), pretrained="random").run.encoded == {"images": 40, "prompts": 500}
    assert run(model=str(config), pretrained="random").run.encoded == {"images": 0, "prompts": 0}
    cfg = json.loads(config.read_text())
    cfg["text_cfg"]["layers"] += 1  # the same name and file, another architecture
    config.write_text(json.dumps(cfg))
    assert run(model=str(config), pretrained="random").run.encoded == {"images": 40, "prompts": 500}


def test_a_model_config_is_one_model_to_the_cache_however_its_path_is_spelled(run, capsys, monkeypatch):
    assert run().run.encoded == {"images": 40, "prompts": 500}
    monkeypatch.chdir(run.model.parent.parent)
    relative = os.path.join(run.model.parent.name, "..", run.model.parent.name, run.model.name)
    assert run(model=relative).run.encoded == {"images": 0, "prompts": 0}
    assert main(["cache", "list", "--model", relative, "--feature-cache", str(run.cache)]) == 0
    assert "2 entries" in capsys.readouterr().out
    assert main(["cache", "clear", "--model", relative, "--feature-cache", str(run.cache)]) == 0
    assert run().run.encoded == {"images": 40, "prompts": 500}


def test_cache_list_and_clear_by_model(run, capsys):
    model = run().run.model
    assert main(["cache", "list", "--feature-cache", str(run.cache)]) == 0
    listing = capsys.readouterr().out
    assert "images" in listing and "40/40" in listing and "500" in listing and "2 entries" in listing
    assert main(["cache", "clear", "--model", "some-other-model", "--feature-cache", str(run.cache)]) == 0
    assert "removed 0 B" in capsys.readouterr().out
    assert run().run.encoded == {"images": 0, "prompts": 0}
    assert main(["cache", "clear", "--model", model, "--feature-cache", str(run.cache)]) == 0
    assert "removed 0 B" not in capsys.readouterr().out
    assert run().run.encoded == {"images": 40, "prompts": 500}


@pytest.mark.parametrize("action", ["list", "clear"])
def test_cache_commands_on_a_file_are_one_line(tmp_path, capsys, action):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    message = helpers.cli_error(capsys, ["cache", action, "--feature-cache", str(blocker)])
    assert message == f"clipzs: error: the feature cache {blocker} is a file, not a folder"
    assert blocker.read_text() == "not a folder"


def test_cache_clear_that_cannot_remove_is_one_line(run, tmp_path, capsys, monkeypatch):
    run()
    capsys.readouterr()

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied", str(src))

    monkeypatch.setattr(os, "rename", refuse)  # a read-only cache, as root (who ignores permissions) cannot make
    assert main(["cache", "clear", "--feature-cache", str(run.cache)]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("clipzs: error: ") and str(run.cache) in line and "Permission denied" in line
    assert "Traceback" not in captured.err + captured.out
    monkeypatch.undo()
    assert run().run.encoded == {"images": 0, "prompts": 0}  # nothing was removed

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for action in ("clear", "list"):  # a cache that cannot exist: nothing to list or clear
        assert main(["cache", action, "--feature-cache", str(blocker / "cache")]) == 0
        captured = capsys.readouterr()
        assert captured.err == "" and "Traceback" not in captured.out


def test_unwritable_feature_cache_runs_uncached_with_one_warning(run, tmp_path, tiny_args, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("no folder can be made under a file, whoever runs this")
    with pytest.warns(UserWarning, match="feature cache") as caught:
        result = run(feature_cache=blocker / "cache")
    assert len(caught) == 1 and str(blocker / "cache") in str(caught[0].message)
    assert result.run.encoded == {"images": 40, "prompts": 500}
    assert blocker.read_text().startswith("no folder")

    assert main(["eval", *tiny_args, "--templates", "seed", "--feature-cache", str(blocker / "cache")]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("clipzs: warning: feature cache ")
    assert str(blocker / "cache") in warnings[0]
    assert "Traceback" not in captured.err


def test_the_cli_warning_about_an_unwritable_cache_names_the_flag(tmp_path, tiny_args, capsys):
    """The CLI user turns the cache off with --no-cache; `use_cache=False` is the library's spelling."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["eval", *tiny_args, "--templates", "seed", "--feature-cache", str(blocker / "cache")]) == 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert "use_cache=False" not in warning and "--no-cache" in warning


@pytest.fixture
def folder_dataset(tmp_path, cifar_root):
    """Twelve CIFAR images as PNG files, in class folders."""
    return helpers.cifar_image_folder(tmp_path / "folder", cifar_root, 12, lambda i, label: f"class{label % 3}")


def test_a_folder_dataset_is_cached_and_a_touched_file_is_encoded_again(run, folder_dataset):
    options = dict(dataset="folder", data_root=folder_dataset)
    first = run(**options)
    assert first.run.encoded == {"images": 12, "prompts": 15} and first.run.num_images == 12
    assert first.run.classes == ("class0", "class1", "class2")
    second = run(**options)
    assert second.run.encoded == {"images": 0, "prompts": 0}
    assert _metrics(second) == _metrics(first)

    touched = sorted(folder_dataset.rglob("*.png"))[4]
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = run(**options)
    assert third.run.encoded["images"] > 0 and third.run.encoded["prompts"] == 0
    assert _metrics(third) == _metrics(first)  # same pixels: same features

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(touched)  # new content: new features
    assert run(**options).run.encoded["images"] > 0
