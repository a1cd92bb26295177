"""The stages wired together: typed results and their JSON, `clipzs encode`, unreadable images, Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import helpers
import pytest
import torch

from clipzs import pipeline
from clipzs.cli import main
from clipzs.errors import ClipzsError
from clipzs.results import EvalResult, from_json, read_result, to_json, write_result


@pytest.fixture
def options(tiny_config, tiny_checkpoint, cifar_root, tmp_path):
    return dict(
        model=str(tiny_config),
        pretrained=str(tiny_checkpoint),
        data_root=cifar_root,
        progress=False,
        templates="seed",
        feature_cache=tmp_path / "features",
    )


def test_evaluate_returns_a_typed_result_that_its_json_gives_back(options, tmp_path):
    result = pipeline.evaluate(
        ensemble="logit,embedding", sweep=True, limit=20, **{**options, "data_root": str(options["data_root"])}
    )
    assert isinstance(result, EvalResult)
    assert result.run.num_images == 20 and len(result.labels) == 20 and len(result.best.pred) == 20
    assert [row.label for row in result.single] == [f"template {t}" for t in range(1, 6)]
    assert len(result.ensembles) == 2 * 31 and result.swept()
    assert result.headline().label == "embedding{1,2,3,4,5}"
    assert from_json(json.loads(json.dumps(to_json(result)))) == result
    data = to_json(result)
    assert data["kind"] == "eval" and data["dataset"] == "cifar100" and data["metrics_row"] == "embedding{1,2,3,4,5}"
    with pytest.raises(ClipzsError, match="unknown option"):
        pipeline.evaluate(classname_style="raw", **options)  # the old name of `classnames`


def test_paths_given_as_path_objects_are_written_as_strings(options, tmp_path):
    """The library takes paths as `Path`s too (data_root, feature_cache, ...): the JSON holds them as strings."""
    result = pipeline.evaluate(ensemble="logit", limit=4, **options)
    write_result(result, tmp_path / "r.json")
    written = read_result(tmp_path / "r.json")
    assert written.run.data_root == str(options["data_root"])
    assert written.run.options["feature_cache"] == str(options["feature_cache"])


def test_encode_fills_the_cache_so_that_eval_encodes_nothing(tiny_args, tmp_path, capsys):
    cache = ["--feature-cache", str(tmp_path / "features"), "--templates", "seed", "--limit", "10"]
    assert main(["encode", *tiny_args, *cache]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("cifar100/test: encoded 10 of 10 images and 500 of 500 prompts now")
    assert line.endswith("0 unreadable")
    assert main(["encode", *tiny_args, *cache]) == 0
    assert "encoded 0 of 10 images and 0 of 500 prompts" in capsys.readouterr().out
    out = tmp_path / "r.json"
    assert main(["eval", *tiny_args, *cache, "--ensemble", "logit", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["encoded"] == {"images": 0, "prompts": 0}
    assert "--no-cache" in helpers.cli_error(capsys, ["encode", *tiny_args, *cache, "--no-cache"])


# --- an unreadable image -------------------------------------------------------------------------------------------


@pytest.fixture
def folder_with_a_truncated_jpeg(tmp_path, cifar_root):
    """Nine CIFAR images as JPEG files in three class folders; class1/04.jpg is cut in half."""
    root = helpers.cifar_image_folder(
        tmp_path / "folder", cifar_root, 9, lambda i, _: f"class{i % 3}", ".jpg", quality=95
    )
    broken = root / "class1" / "04.jpg"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    return root, broken


def test_an_unreadable_image_is_named_left_out_and_recorded(tiny_args, folder_with_a_truncated_jpeg, tmp_path, capsys):
    root, broken = folder_with_a_truncated_jpeg
    argv = ["eval", *tiny_args, "--dataset", "folder", "--data-root", str(root), "--templates", "seed"]
    argv += ["--feature-cache", str(tmp_path / "features"), "--ensemble", "logit"]
    out = tmp_path / "r.json"
    for run in ("cold", "warm"):
        assert main([*argv, "--out", str(out)]) == 0, run
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        assert "skipped 1 unreadable image" in captured.out and "class1/04.jpg" in captured.out, run
        result = read_result(out)
        (skipped,) = result.run.skipped
        assert skipped.name == str(broken) and skipped.reason and "\n" not in skipped.reason
        assert skipped.index == sorted(root.rglob("*.jpg")).index(broken)
        assert result.run.num_images == 8 and len(result.labels) == 8
        if run == "warm":  # the image and why it could not be read came from the cache
            assert result.run.encoded["images"] == 0
    cold = ["--feature-cache", str(tmp_path / "other-features")]
    assert main([*argv, *cold, "--strict"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("clipzs: error: ") and str(broken) in line


def test_strict_stops_at_an_unreadable_image_the_cache_knows(tiny_args, folder_with_a_truncated_jpeg, tmp_path, capsys):
    """--strict means no image is left out, whether it was found unreadable now or on an earlier run."""
    root, broken = folder_with_a_truncated_jpeg
    argv = ["eval", *tiny_args, "--dataset", "folder", "--data-root", str(root), "--templates", "seed"]
    argv += ["--feature-cache", str(tmp_path / "features"), "--ensemble", "logit"]
    assert main(argv) == 0  # not strict: the image is left out, and the cache remembers why
    capsys.readouterr()
    assert main([*argv, "--strict"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("clipzs: error: ") and str(broken) in line


def test_the_summary_never_counts_more_images_encoded_than_evaluated(
    tiny_args, folder_with_a_truncated_jpeg, tmp_path, capsys
):
    root, _ = folder_with_a_truncated_jpeg
    argv = ["eval", *tiny_args, "--dataset", "folder", "--data-root", str(root), "--templates", "seed"]
    assert main([*argv, "--ensemble", "logit", "--no-cache"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("encoded now: ")]
    words = line.split()
    encoded, total = int(words[2]), int(words[4])
    assert words[3] == "of" and encoded <= total, line


def test_strict_stops_a_cold_run_at_the_unreadable_image(options, folder_with_a_truncated_jpeg):
    root, broken = folder_with_a_truncated_jpeg
    with pytest.raises(ClipzsError) as error:
        pipeline.evaluate(**{**options, "dataset": "folder", "data_root": root, "strict": True, "use_cache": False})
    assert str(broken) in str(error.value) and "\n" not in str(error.value)


def test_an_unreadable_image_is_left_out_of_the_features(options, folder_with_a_truncated_jpeg):
    root, broken = folder_with_a_truncated_jpeg
    setup = pipeline.Setup(**{**options, "dataset": "folder", "data_root": str(root), "use_cache": False})
    source, spec = pipeline.prepare(setup)
    run = pipeline.encode(setup, source, spec)
    position = list(source.paths).index(str(broken))
    assert run.kept.tolist() == [i for i in range(9) if i != position]
    assert not torch.isnan(run.features.image).any() and len(run.features.image) == 8
    assert run.features.labels.tolist() == [source.labels[i] for i in run.kept]


# --- Ctrl-C ---------------------------------------------------------------------------------------------------------

# `clipzs eval` in a child whose first image batch says so on stdout and then waits to be interrupted: the
# parent sends SIGINT once it reads that line, so the signal always lands during the encoding. The child first
# gives SIGINT Python's own handler, as a terminal's Python has it: a shell starts a background job with SIGINT
# ignored, and a Python started so keeps ignoring it (the suite run as `(pytest &)` hung here). It waits on the
# wakeup pipe, which Python's handler writes to whichever of the child's threads receives the signal, and the main
# thread raises KeyboardInterrupt at the loop's next turn.
INTERRUPTED = """
    import os, select, signal, sys
    import clipzs.encode
    from clipzs.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)
    wakeup, written = os.pipe()
    os.set_blocking(written, False)
    signal.set_wakeup_fd(written)

    def wait(self, batch):
        print("encoding", flush=True)
        while True:  # until the interrupt
            select.select([wakeup], [], [])
            os.read(wakeup, 64)

    clipzs.encode.ChunkEncoder.run = wait
    sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_during_encoding_exits_130_without_a_traceback(tiny_args, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("a photo of a {}.\n")
    args = [*tiny_args, "--templates", str(one), "--feature-cache", str(tmp_path / "features")]
    child = subprocess.Popen(
        [sys.executable, "-c", helpers.AS_INSTALLED + textwrap.dedent(INTERRUPTED), "eval", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        assert child.stdout.readline() == "encoding\n"
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert err.strip().splitlines()[-1] == "clipzs: interrupted"
