import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import helpers
import pytest
import torch

from clipzs import cli, encoding, models, pipeline
from clipzs import results as results_module
from clipzs.cli import PRESETS, build_parser, library_options, main
from clipzs.ensemble import METHODS, all_subsets
from clipzs.errors import ClipzsError
from clipzs.options import SETUP_FIELDS, Setup
from clipzs.sources import cifar


@pytest.fixture
def eval_args(tiny_args):
    return ["eval", *tiny_args, "--templates", "seed"]


def _results(path) -> dict:
    return json.loads(path.read_text())


def _metrics(results: dict) -> list:
    return [results["single"], results["ensembles"], results["best"], results["comparisons"]]


# --- runs ------------------------------------------------------------------------------------------------------


def test_preset_seed_runs_offline_with_local_files_and_writes_the_full_sweep(tiny_args, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main(["eval", *tiny_args, "--preset", "seed", "--out", str(out)]) == 0
    results = _results(out)
    assert results["dataset"] == "cifar100" and results["split"] == "test" and results["num_images"] == 40
    assert results["classnames"] == "raw" and "aquarium_fish" in results["classes"]
    assert [r["template"] for r in results["single"]] == [
        "A photo of a {}",
        "This is a photo of {}",
        "Wow look at {}!",
        "What is {}?",
        "How do you think about {}?",
    ]
    assert len(results["ensembles"]) == 31 * len(METHODS)
    assert {(e["method"], tuple(e["templates"])) for e in results["ensembles"]} == {
        (m, s) for m in METHODS for s in all_subsets(5)
    }
    for row in results["ensembles"] + results["single"]:
        assert 0 <= row["acc1"] <= 1 and 0 <= row["mean_per_class_recall"] <= 1
        assert (row["acc5"] is None) == (row.get("method") in ("vote", "vote-seed"))
    for key in ("model", "pretrained", "precision", "templates", "seconds"):
        assert key in results
    assert results["options"]["sweep"] is True and results["options"]["ensemble"] == list(METHODS)
    printed = capsys.readouterr().out
    assert "Wow look at {}!" in printed and "acc1 of every template subset" in printed
    assert len([line for line in printed.splitlines() if line.startswith("{")]) == 31  # one row per subset


def test_preset_narrowed_by_its_options(tiny_args, tmp_path):
    out = tmp_path / "results.json"
    argv = ["eval", *tiny_args, "--preset", "seed", "--no-sweep", "--classnames", "clip", "--ensemble", "logit"]
    assert main([*argv, "--out", str(out)]) == 0
    results = _results(out)
    assert [(e["method"], e["templates"]) for e in results["ensembles"]] == [("logit", [0, 1, 2, 3, 4])]
    assert results["classnames"] == "clip" and "aquarium fish" in results["classes"]
    assert results["templates"][0] == "A photo of a {}"  # the preset's templates, not overridden


def test_single_templates_agree_with_singleton_ensembles(eval_args, tmp_path):
    out = tmp_path / "r.json"
    assert main([*eval_args, "--sweep", "--ensemble", "logit,vote-seed", "--out", str(out)]) == 0
    results = _results(out)
    compared = 0
    for t, single in enumerate(results["single"]):
        for e in results["ensembles"]:
            if e["templates"] == [t]:
                assert e["acc1"] == single["acc1"]
                compared += 1
    assert compared == 2 * 5


def test_without_sweep_each_method_uses_all_templates(tiny_args, tmp_path):
    out = tmp_path / "r.json"
    argv = ["eval", *tiny_args, "--templates", "cifar", "--classnames", "clip", "--limit", "10", "--out", str(out)]
    assert main(argv) == 0
    results = _results(out)
    assert results["num_images"] == 10 and "aquarium fish" in results["classes"]
    assert [e["templates"] for e in results["ensembles"]] == [list(range(18))] * len(METHODS)


def test_the_default_templates_are_the_datasets_own(tiny_args, tmp_path):
    from clipzs import catalogue

    out = tmp_path / "r.json"
    assert main(["eval", *tiny_args, "--limit", "4", "--ensemble", "embedding", "--out", str(out)]) == 0
    assert _results(out)["templates"] == list(catalogue.get("cifar100").templates)


def test_console_script_runs_in_a_fresh_process_and_the_local_engine_never_imports_ray(eval_args, tmp_path):
    clipzs = os.path.join(os.path.dirname(sys.executable), "clipzs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPROFILEIMPORTTIME": "1"}  # every import, listed on stderr
    done = subprocess.run(
        [clipzs, *eval_args, "--limit", "4", "--ensemble", "embedding", "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert _results(tmp_path / "r.json")["ensembles"][0]["method"] == "embedding"
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert {"torch", "open_clip"} <= imported
    assert not {name for name in imported if name == "ray" or name.startswith("ray.")}


def test_balance_no_cache_and_workers(eval_args, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPZS_FEATURE_CACHE", str(cache))
    runs = {}
    for name, extra in {
        "workers0": ["--workers", "0"],
        "workers1": ["--workers", "1", "--no-cache"],
        "balanced": ["--balance", "--no-cache"],
    }.items():
        out = tmp_path / f"{name}.json"
        assert main([*eval_args, "--limit", "16", *extra, "--out", str(out)]) == 0
        runs[name] = _results(out)
    # --workers 1: a DataLoader process decodes the images; the same features, the same results
    assert runs["workers1"]["options"]["workers"] == 1 and runs["workers0"]["options"]["workers"] == 0
    assert _metrics(runs["workers1"]) == _metrics(runs["workers0"])
    # --no-cache: everything encoded again, nothing written
    assert runs["workers1"]["options"]["use_cache"] is False and runs["workers0"]["options"]["use_cache"] is True
    assert runs["workers1"]["encoded"] == {"images": 16, "prompts": 500}
    entries = {p.parent for p in cache.rglob("entry.json")}
    assert len(entries) == 2  # the first run's text and image entries only
    mtimes = sorted(p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file())
    assert main([*eval_args, "--limit", "16", "--no-cache"]) == 0
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()) == mtimes
    # --balance: every score method's balanced variant, after the methods themselves
    balanced = runs["balanced"]
    assert balanced["options"]["balance"] is True
    assert balanced["methods"] == [*METHODS, *(m + "+balanced" for m in METHODS if not m.startswith("vote"))]
    assert [e["method"] for e in balanced["ensembles"]] == balanced["methods"]
    assert balanced["ensembles"][: len(METHODS)] == runs["workers0"]["ensembles"]


def test_results_record_the_bootstrap_and_every_option(tiny_args, tmp_path):
    """CIFAR-10 (10 classes, so even the random model gets some images right and the intervals are not [0, 0])."""
    root = tmp_path / "data"
    helpers.write_cifar10(root, n_per_batch=30)
    out = tmp_path / "r.json"
    given = [
        "--data-root", str(root), "--templates", "seed", "--limit", "24", "--batch-size", "5", "--workers", "0",
        "--precision", "fp32", "--device", "cpu", "--classnames", "raw", "--split", "test", "--dataset", "cifar10",
        "--cache-dir", str(tmp_path / "ckpts"), "--feature-cache", str(tmp_path / "features"), "--strict",
        "--ensemble", "logit,prob", "--sweep", "--balance", "--resamples", "50", "--seed", "3",
    ]  # fmt: skip
    assert main(["eval", *tiny_args, *given, "--out", str(out)]) == 0
    results = _results(out)
    assert results["bootstrap"] == {"resamples": 50, "seed": 3, "level": 0.95, "rows": "all"}
    options = results["options"]
    assert set(SETUP_FIELDS) <= set(options)
    assert {k: options[k] for k in ("limit", "batch_size", "workers", "precision", "device", "classnames")} == {
        "limit": 24,
        "batch_size": 5,
        "workers": 0,
        "precision": "fp32",
        "device": "cpu",
        "classnames": "raw",
    }
    assert options["split"] == "test" and options["dataset"] == "cifar10" and options["templates"] == "seed"
    assert options["cache_dir"] == str(tmp_path / "ckpts") and options["feature_cache"] == str(tmp_path / "features")
    assert options["data_root"] == str(root) and options["strict"] is True and options["progress"] is False
    assert options["use_cache"] is True and options["compile"] is False and options["engine"] == "local"
    assert options["ensemble"] == ["logit", "prob", "logit+balanced", "prob+balanced"]
    assert (options["sweep"], options["balance"], options["resamples"], options["seed"]) == (True, True, 50, 3)
    assert any((tmp_path / "features").rglob("entry.json"))  # --feature-cache was used, not just recorded

    # the best row's interval is the recorded resamples' percentile interval of its recorded predictions
    import torch

    from clipzs.metrics import Resamples

    hits = (torch.tensor(results["best"]["pred"]) == torch.tensor(results["labels"])).float()
    draws = Resamples(len(hits), 50, 3)
    best = next(r for r in results["ensembles"] if r["acc1"] == results["best"]["acc1"])
    expected = draws.intervals(draws.sums(hits[None].bool(), 0, len(hits)), 0.95)[0].tolist()
    assert best["acc1_ci"] == pytest.approx(expected)
    assert 0 < best["acc1"] < 1 and best["acc1_ci"][0] < best["acc1_ci"][1]

    again = tmp_path / "again.json"  # another seed draws other resamples: other intervals, the same accuracies
    assert main(["eval", *tiny_args, *given[:-2], "--seed", "4", "--out", str(again)]) == 0
    other = _results(again)
    assert other["bootstrap"]["seed"] == 4
    assert [r["acc1"] for r in other["ensembles"]] == [r["acc1"] for r in results["ensembles"]]
    assert [r["acc1_ci"] for r in other["ensembles"]] != [r["acc1_ci"] for r in results["ensembles"]]


def test_select_and_compare_results_record_their_options(eval_args, tmp_path):
    argv = eval_args[1:]
    out = tmp_path / "s.json"
    given = ["--select-split", "test", "--select-size", "8", "--seed", "2"]
    assert main(["select", *argv, *given, "--out", str(out)]) == 0
    options = _results(out)["options"]
    assert set(SETUP_FIELDS) <= set(options)
    assert (options["select_split"], options["select_size"], options["seed"]) == ("test", 8, 2)
    assert options["ensemble"] == ["embedding"] and options["templates"] == "seed"
    out = tmp_path / "c.json"
    assert main(["compare", "logit", "template:2", *argv, "--resamples", "30", "--out", str(out)]) == 0
    results = _results(out)
    assert set(SETUP_FIELDS) <= set(results["options"])
    assert (results["options"]["a"], results["options"]["b"], results["options"]["resamples"]) == (
        "logit",
        "template:2",
        30,
    )
    assert results["kind"] == "compare" and results["a"]["label"] == "logit{1,2,3,4,5}"


# --- the CLI's map onto the library ------------------------------------------------------------------------------


def _subparser(command: str) -> argparse.ArgumentParser:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices[command]


def _action(parser: argparse.ArgumentParser, dest: str) -> argparse.Action:
    found = [a for a in parser._actions if a.dest == dest and a.option_strings]
    assert found, f"no option of `{parser.prog}` sets {dest}"
    return found[0]


def _every_setup_option(parser: argparse.ArgumentParser) -> tuple[list[str], dict]:
    """Each Setup field's option with a value other than Setup's default, and the values expected."""
    argv, expected = [], {}
    default = Setup()
    for field in SETUP_FIELDS:
        action = _action(parser, field)
        if action.nargs == 0:  # a switch: store_true (strict, compile, ...) or store_false (--no-cache, --quiet)
            argv.append(action.option_strings[0])
            expected[field] = action.const
        elif action.choices:
            choice = next(c for c in action.choices if c != getattr(default, field))
            argv += [action.option_strings[0], choice]
            expected[field] = choice
        elif action.type is not None and action.type is not str:
            argv += [action.option_strings[0], "3"]
            expected[field] = 3
        else:
            argv += [action.option_strings[0], f"given-{field}"]
            expected[field] = f"given-{field}"
        assert expected[field] != getattr(default, field), field
    return argv, expected


COMMANDS = {
    "eval": ([], "evaluate"),
    "select": ([], "select"),
    "compare": (["logit", "template:1"], "compare"),
    "encode": ([], "encode_only"),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_setup_field_reaches_the_library_from_the_cli(command, monkeypatch, capsys):
    positional, function = COMMANDS[command]
    argv, expected = _every_setup_option(_subparser(command))
    args = build_parser().parse_args([command, *positional, *argv])
    options = library_options(args)
    assert {k: options[k] for k in SETUP_FIELDS} == expected
    Setup(**{k: options[k] for k in SETUP_FIELDS})  # every value is one Setup takes

    captured = {}

    def capture(**kwargs):
        captured.update(kwargs)
        raise ClipzsError("captured")

    monkeypatch.setattr(pipeline, function, capture)
    monkeypatch.setattr(cli, "_check_outputs", lambda *a, **k: None)
    assert main([command, *positional, *argv]) == 2
    assert "captured" in capsys.readouterr().err
    assert {k: captured[k] for k in SETUP_FIELDS} == expected
    assert captured["compile"] is True and captured["use_cache"] is False and captured["progress"] is False


def test_only_options_given_reach_the_library():
    args = build_parser().parse_args(["eval", "--limit", "3"])
    assert library_options(args) == {"limit": 3}
    args = build_parser().parse_args(["compare", "logit", "2"])
    assert library_options(args) == {"a": "logit", "b": "2"}


def test_every_preset_key_is_overridden_by_its_option():
    preset = PRESETS["seed"]
    assert set(preset) == {"dataset", "split", "model", "pretrained", "templates", "classnames", "ensemble", "sweep"}
    parser = _subparser("eval")
    untouched = library_options(build_parser().parse_args(["eval", "--preset", "seed"]))
    assert untouched == preset
    for key, value in preset.items():
        action = _action(parser, key)
        if isinstance(value, bool):  # --sweep / --no-sweep
            flag = next(f for f in action.option_strings if f.startswith("--no-") != (not value))
            assert flag == "--no-sweep"
            argv, wanted = [flag], not value
        else:
            argv, wanted = [action.option_strings[0], f"other-{key}"], f"other-{key}"
        options = library_options(build_parser().parse_args(["eval", "--preset", "seed", *argv]))
        assert options == {**preset, key: wanted}, key


# --- errors: one line, before any work ---------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors_with_nonzero_exit(eval_args, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    bad_templates = tmp_path / "t.txt"
    bad_templates.write_text("a photo of {}\nno placeholder here\n")
    assert "no placeholder here" in helpers.cli_error(capsys, [*eval_args, "--templates", str(bad_templates)])
    assert "unknown model 'ViT-Z/1'" in helpers.cli_error(capsys, [*eval_args, "--model", "ViT-Z/1"])
    message = helpers.cli_error(capsys, [*eval_args, "--ensemble", "median"])
    assert "--ensemble" in message and "unknown method(s) median" in message

    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    assert "truncated" in helpers.cli_error(capsys, [*eval_args, "--pretrained", str(truncated)])

    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"photo {i} of {{}}" for i in range(13)))
    message = helpers.cli_error(capsys, [*eval_args, "--templates", str(many), "--sweep"])
    assert "limited to 12 templates" in message and "--sweep" in message

    url = helpers.refused_url("cifar-100-python.tar.gz")
    monkeypatch.setitem(cifar.CIFAR, "cifar100", dataclasses.replace(cifar.CIFAR["cifar100"], url=url))
    assert url in helpers.cli_error(capsys, [*eval_args, "--data-root", str(tmp_path / "empty")])


def test_a_bad_split_names_the_valid_ones(eval_args, capsys):
    message = helpers.cli_error(capsys, [*eval_args, "--split", "bogus"])
    assert "'bogus'" in message and "test" in message and "train" in message


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--device", "tpu"], ["--device", "'tpu'", "cpu", "cuda"]),
        (["--batch-size", "0"], ["--batch-size", "at least 1"]),
        (["--workers", "-1"], ["--workers", "0 or more"]),
        (["--limit", "0"], ["--limit", "at least 1"]),
        (["--limit", "abc"], ["--limit", "must be a whole number, got 'abc'"]),
        (["--seed", "1.5"], ["--seed", "must be a whole number, got '1.5'"]),
    ],
)
def test_bad_values_are_messages_not_tracebacks(eval_args, argv, words, capsys):
    try:
        status = main([*eval_args, *argv])
    except SystemExit as e:  # argparse refuses a bad type itself: usage, then one error line
        status = e.code
    assert status == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert all(w in last for w in words), last


def test_missing_openai_weights_fail_fast_with_the_download_error(cifar_root, tmp_path, capsys, monkeypatch):
    url = helpers.refused_url("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
    monkeypatch.setitem(models.OPENAI_MODELS, "ViT-B/32", {**models.OPENAI_MODELS["ViT-B/32"], "url": url})
    message = helpers.cli_error(
        capsys, ["eval", "--preset", "seed", "--data-root", str(cifar_root), "--cache-dir", str(tmp_path)]
    )
    assert url in message and str(tmp_path / "ViT-B-32.pt") in message
    assert "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af" in message


def test_wrong_sha256_in_cache_without_network_says_so(cifar_root, tmp_path, capsys, monkeypatch):
    url = helpers.refused_url("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
    monkeypatch.setitem(models.OPENAI_MODELS, "ViT-B/32", {**models.OPENAI_MODELS["ViT-B/32"], "url": url})
    (tmp_path / "ViT-B-32.pt").write_bytes(b"partial download")
    message = helpers.cli_error(
        capsys, ["eval", "--preset", "seed", "--data-root", str(cifar_root), "--cache-dir", str(tmp_path)]
    )
    assert "wrong SHA256" in message


def _no_work(monkeypatch):
    """Fail the test if any image or model is touched."""

    def refuse(*args, **kwargs):
        raise AssertionError("work started before the arguments were checked")

    for module in (pipeline, encoding):
        for name in ("encode", "prepare", "open_images", "load_model", "describe_model", "open_source"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, refuse)


def test_compare_with_a_bogus_method_fails_before_any_work(eval_args, capsys, monkeypatch):
    _no_work(monkeypatch)
    message = helpers.cli_error(capsys, ["compare", "bogus", "embedding", *eval_args[1:]])
    assert "bogus" in message
    message = helpers.cli_error(capsys, ["compare", "embedding", "template:9", *eval_args[1:]])  # the seed set has 5
    assert "template:9" in message


def test_weights_that_give_features_that_are_not_finite_are_refused(eval_args, tiny_state, tmp_path, capsys):
    nan = {k: torch.full_like(v, torch.nan) if k == "ln_final.weight" else v for k, v in tiny_state.items()}
    path = helpers.save_state_dict(nan, tmp_path / "nan.pt")
    message = helpers.cli_error(capsys, [*eval_args, "--pretrained", str(path), "--no-cache", "--limit", "4"])
    assert "features of 500 of the 500 prompts are not finite (NaN or inf): its weights" in message


@pytest.mark.parametrize("spec", ["all", "logit,prob", "all:1+2"])
def test_compare_takes_one_method_per_side(eval_args, capsys, monkeypatch, spec):
    _no_work(monkeypatch)
    message = helpers.cli_error(capsys, ["compare", spec, "embedding", *eval_args[1:]])
    assert f"cannot read {spec!r}: name one method" in message


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--seed", "-1"], ["--seed must be 0 to 2**63 - 1, got -1"]),
        (["--seed", str(2**64)], ["--seed must be 0 to 2**63 - 1"]),
        (["--resamples", str(10**11)], ["--resamples must be 1 to 1,000,000"]),
    ],
)
def test_a_seed_or_resample_count_the_bootstrap_cannot_use_fails_before_any_work(
    eval_args, capsys, monkeypatch, argv, words
):
    _no_work(monkeypatch)
    for command in (eval_args, ["select", *eval_args[1:]], ["compare", "logit", "1", *eval_args[1:]]):
        message = helpers.cli_error(capsys, [*command, *argv])
        assert all(w in message for w in words), message


def test_out_in_a_folder_not_made_yet_is_written_there(eval_args, tmp_path):
    out = tmp_path / "new" / "deeper" / "r.json"
    assert main([*eval_args, "--limit", "4", "--ensemble", "logit", "--out", str(out)]) == 0
    assert _results(out)["ensembles"][0]["method"] == "logit"


def test_compare_error_does_not_name_an_option_compare_lacks(eval_args, capsys, monkeypatch):
    _no_work(monkeypatch)
    message = helpers.cli_error(capsys, ["compare", "bogus", "embedding", *eval_args[1:]])
    assert "--ensemble" not in message  # compare's methods are its A and B, not an --ensemble option


@pytest.mark.parametrize("out", ["folder", "file-as-parent"])
def test_an_unwritable_out_fails_before_any_work(eval_args, tmp_path, capsys, monkeypatch, out):
    _no_work(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me")
    target = {"folder": tmp_path, "file-as-parent": blocker / "results.json"}[out]
    message = helpers.cli_error(capsys, [*eval_args, "--out", str(target)])
    assert "--out" in message and str(target) in message
    for command in (["select", *eval_args[1:]], ["compare", "logit", "1", *eval_args[1:]]):
        assert "--out" in helpers.cli_error(capsys, [*command, "--out", str(target)])
    assert "--report" in helpers.cli_error(capsys, [*eval_args, "--report", str(blocker / "report")])
    assert blocker.read_text() == "keep me"


def _results_write_fails(monkeypatch) -> None:
    """The results file's final rename fails (a full disk, say), after its temporary file was written."""
    real = results_module.write_atomic

    def failing(path, data):
        def full_disk(src, dst):
            raise OSError(28, "No space left on device")

        with monkeypatch.context() as m:
            m.setattr(os, "replace", full_disk)
            real(path, data)

    monkeypatch.setattr(results_module, "write_atomic", failing)


def test_a_failed_write_leaves_the_old_results_whole_after_printing_the_summary(
    eval_args, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "results.json"
    assert main([*eval_args, "--limit", "8", "--ensemble", "logit", "--out", str(out)]) == 0
    old = out.read_bytes()
    capsys.readouterr()
    _results_write_fails(monkeypatch)
    with contextlib.suppress(OSError):  # whether the failure is worded or raised is the next test's concern
        main([*eval_args, "--limit", "12", "--ensemble", "logit", "--out", str(out)])
    monkeypatch.undo()
    assert out.read_bytes() == old
    assert "ensembles of all templates" in capsys.readouterr().out  # the summary came first
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temporary file left behind


def test_a_failed_write_is_one_line(eval_args, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results.json"
    _results_write_fails(monkeypatch)
    message = helpers.cli_error(capsys, [*eval_args, "--limit", "8", "--ensemble", "logit", "--out", str(out)])
    assert str(out) in message and "No space left on device" in message


def test_a_folder_dataset_without_data_root_names_the_flag(tiny_config, tiny_checkpoint, capsys):
    message = helpers.cli_error(capsys, ["eval", "--dataset", "folder", "--model", str(tiny_config), "--quiet"])
    assert "--data-root" in message


def test_predict_with_an_unknown_class_set_does_not_suggest_it(tiny_config, tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    model = ["--model", str(tiny_config), "--pretrained", str(tiny_checkpoint)]
    message = helpers.cli_error(capsys, ["predict", str(image), "--classes", "folder", *model])
    assert "'folder'" in message and "cifar100" in message
    assert "(folder" not in message  # `folder` is a dataset format, not a set of class names


# --- report --------------------------------------------------------------------------------------------------------


def test_eval_report_and_report_command_write_the_same_files(eval_args, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main([*eval_args, "--sweep", "--limit", "12", "--out", str(out), "--report", str(tmp_path / "a")]) == 0
    assert main(["report", str(out)]) == 0
    for folder in (tmp_path / "a", tmp_path / "results-report"):
        names = {p.name for p in folder.iterdir()}
        assert {"results.json", "results.csv", "summary.md", "report.html"} <= names
        assert len([n for n in names if n.endswith(".png")]) == 4
        assert "<img" in (folder / "report.html").read_text() and "example" in (folder / "report.html").read_text()
    assert (tmp_path / "a" / "results.json").read_text() == out.read_text()
    assert "report: " in capsys.readouterr().out
    assert "cannot read results" in helpers.cli_error(capsys, ["report", str(tmp_path / "missing.json")])


def test_report_refuses_what_is_not_an_eval_result_in_one_line(eval_args, tmp_path, capsys):
    (tmp_path / "empty.json").write_text("{}")
    assert "not a clipzs results file" in helpers.cli_error(capsys, ["report", str(tmp_path / "empty.json")])
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "not a clipzs results file" in helpers.cli_error(capsys, ["report", str(tmp_path / "list.json")])
    compared = tmp_path / "compare.json"
    assert main(["compare", "logit", "2", *eval_args[1:], "--limit", "6", "--out", str(compared)]) == 0
    capsys.readouterr()
    message = helpers.cli_error(capsys, ["report", str(compared)])
    assert "clipzs compare" in message and "clipzs eval" in message
    cut = tmp_path / "cut.json"
    cut.write_text(compared.read_text()[:200])
    assert "not valid JSON" in helpers.cli_error(capsys, ["report", str(cut)])
    assert not any(p.name.endswith("-report") for p in tmp_path.iterdir())


def test_report_on_other_data_does_not_ask_for_options_report_lacks(tiny_args, tmp_path, capsys):
    root = tmp_path / "data"
    helpers.write_cifar100(root, n_test=12, n_train=None)
    out = tmp_path / "results.json"
    argv = ["eval", *tiny_args, "--data-root", str(root), "--templates", "seed", "--ensemble", "logit"]
    assert main([*argv, "--out", str(out)]) == 0
    helpers.write_cifar100(root, n_test=12, n_train=None, seed=7)  # the data changed since: other labels
    capsys.readouterr()
    main(["report", str(out)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    report_options = {o for a in _subparser("report")._actions for o in a.option_strings}
    named = {word.strip(".,;:()'\"") for word in err.split() if word.startswith("--")}
    assert named <= report_options, err


def test_a_cifar_pickle_with_bytes_class_names_evaluates(tiny_args, tmp_path):
    import pickle

    root = tmp_path / "data"
    helpers.write_cifar100(root, n_test=6, n_train=None)
    with open(root / "cifar-100-python" / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [c.encode() for c in helpers.CIFAR100_CLASSES]}, f, protocol=3)
    out = tmp_path / "r.json"
    argv = ["eval", *tiny_args, "--data-root", str(root), "--templates", "seed", "--classnames", "raw"]
    assert main([*argv, "--ensemble", "logit", "--out", str(out)]) == 0
    assert _results(out)["classes"] == helpers.CIFAR100_CLASSES


# --- listings, prompts, predict ------------------------------------------------------------------------------------


def test_templates_and_models_listings(capsys, tmp_path):
    assert main(["templates", "list"]) == 0
    listing = capsys.readouterr().out
    assert "seed" in listing and "18 templates" in listing and "80 templates" in listing
    assert main(["templates", "show", "seed"]) == 0
    assert "  3  Wow look at {}!" in capsys.readouterr().out
    assert main(["templates", "show", "cifar10"]) == 0  # a dataset's own
    assert len(capsys.readouterr().out.splitlines()) == 18
    (tmp_path / "ViT-B-32.pt").write_bytes(b"x")
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    rows = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()}
    assert rows[("ViT-B/32", "openai")].rstrip().endswith("yes")
    assert not rows[("RN50", "openai")].rstrip().endswith("yes")
    assert ("ViT-B-32", "laion2b_s34b_b79k") in rows


def test_datasets_list_says_which_are_found(tmp_path, cifar_root, capsys):
    assert main(["datasets", "list", "--data-root", str(cifar_root)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert " yes " in rows["cifar100"] and " yes " not in rows["cifar10"]
    assert "test,train" in rows["cifar100"] and str(cifar_root) in rows["cifar100"]
    (tmp_path / "imagenet").mkdir()  # made, but nothing copied into it yet
    assert main(["datasets", "list", "--data-root", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert " empty " in rows["imagenet1k"] and " yes " not in rows["imagenet1k"]


def test_datasets_list_says_unreadable_for_a_folder_it_cannot_list(tmp_path, monkeypatch, capsys):
    locked = tmp_path / "imagenet"
    locked.mkdir()
    listing = Path.iterdir

    def iterdir(self: Path):
        if self == locked:  # as a folder without read permission does (the tests may run as root, which ignores it)
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert main(["datasets", "list", "--data-root", str(tmp_path)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert " unreadable " in rows["imagenet1k"]


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["templates", "list"]])
def test_quick_commands_import_neither_torch_nor_open_clip(argv):
    code = (
        "import sys\nfrom clipzs.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'open_clip'}), file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "[]"
    assert done.stdout.strip()  # it did print something


def test_the_clipzs_command_runs_the_cycle_collector_less_often():
    code = (
        "import gc, sys\nfrom clipzs import cli\nsys.argv = ['clipzs', 'templates', 'list']\n"
        "code = cli.console()\nprint(gc.get_threshold()[0], code)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines()[-1] == f"{cli.GC_THRESHOLD} 0", done.stderr


def test_python_dash_m_clipzs_is_the_clipzs_command():
    from clipzs import __version__

    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "clipzs", *argv], capture_output=True, text=True, timeout=60)

    done = run("--version")
    assert (done.returncode, done.stdout) == (0, f"clipzs {__version__}\n")
    done = run("eval", "--split")
    assert done.returncode == 2 and done.stderr.startswith("usage: clipzs ")  # argparse names the program clipzs


def test_class_specific_prompts_run_with_score_methods(eval_args, tmp_path):
    sentences = {c.replace("_", " "): [f"a photo of a {c}.", f"{c}, in the wild"] for c in helpers.CIFAR100_CLASSES}
    sentences["apple"].append("a red fruit")
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps(sentences))
    out = tmp_path / "r.json"
    assert main([*eval_args, "--templates", str(cupl), "--ensemble", "logit,embedding,carprt", "--out", str(out)]) == 0
    results = _results(out)
    assert results["templates"] == ["class-specific 1", "class-specific 2", "class-specific 3"]
    assert [e["method"] for e in results["ensembles"]] == ["logit", "embedding", "carprt"]


def test_an_overlong_prompt_is_one_warning_line_with_its_token_count(eval_args, tmp_path, capsys):
    from open_clip.tokenizer import SimpleTokenizer

    long = "a photo of an apple " + "which is red and round and sweet " * 12
    sentences = {c.replace("_", " "): [f"a photo of a {c}."] for c in helpers.CIFAR100_CLASSES}
    sentences["apple"] = [long]
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps(sentences))
    tokens = len(SimpleTokenizer().encode(long)) + 2
    assert tokens > 77
    assert main([*eval_args, "--templates", str(cupl), "--ensemble", "logit", "--limit", "4"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1, err
    assert warnings[0].startswith("clipzs: warning: prompt 'a photo of an apple which is red")
    assert f"{tokens} tokens" in warnings[0] and "77" in warnings[0]


def test_predict_prints_topk_for_every_readable_image_and_fails_on_a_corrupt_one(
    tiny_config, tiny_checkpoint, tmp_path, capsys
):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    for name, mode in (("a.jpg", "RGB"), ("b.png", "L"), ("c.webp", "RGB"), ("d.png", "RGBA"), ("e.png", "P")):
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).convert(mode).save(tmp_path / "imgs" / name)
    Image.fromarray(rng.integers(0, 65535, (20, 20), dtype=np.uint16)).save(tmp_path / "imgs" / "f16.png")
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg at all")
    model = ["--model", str(tiny_config), "--pretrained", str(tiny_checkpoint)]

    assert main(["predict", str(tmp_path / "imgs"), "--labels", "cat,dog,car", "--topk", "2", "--json", *model]) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [r["path"].rsplit("/", 1)[1] for r in results] == [
        "a.jpg",
        "b.png",
        "broken.jpg",
        "c.webp",
        "d.png",
        "e.png",
        "f16.png",
    ]
    for r in results:
        if r["path"].endswith("broken.jpg"):
            assert "error" in r
        else:
            assert len(r["top"]) == 2 and {t["label"] for t in r["top"]} <= {"cat", "dog", "car"}
            assert r["top"][0]["prob"] >= r["top"][1]["prob"]
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("clipzs: cannot read ") and "broken.jpg" in line

    assert main(["predict", str(tmp_path / "imgs" / "a.jpg"), "--classes", "cifar10", *model]) == 0
    out = capsys.readouterr().out
    assert out.startswith(str(tmp_path / "imgs" / "a.jpg") + ": ") and out.count("%") == 5


# --- several datasets and models: a grid ---------------------------------------------------------------------------


def test_a_grid_of_datasets_writes_one_result_per_pair_and_the_grid(tiny_config, tiny_checkpoint, tmp_path, capsys):
    root = tmp_path / "data"
    helpers.write_cifar100(root, n_test=10, n_train=None)
    helpers.write_cifar10(root, n_per_batch=6)
    out = tmp_path / "grid"
    argv = ["eval", "--dataset", "cifar10,cifar100", "--model", str(tiny_config), "--pretrained", str(tiny_checkpoint)]
    argv += ["--data-root", str(root), "--templates", "seed", "--ensemble", "logit,embedding", "--quiet"]
    assert main([*argv, "--out", str(out)]) == 0
    files = sorted(p.name for p in out.iterdir())
    results = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(results) == 2 and {"grid.csv", "grid.md", "grid.png"} <= set(files)
    assert sorted(r["dataset"] for r in results) == ["cifar10", "cifar100"]
    assert sorted(r["num_images"] for r in results) == [6, 10]
    for path in out.glob("*.json"):
        assert json.loads(path.read_text())["dataset"] in path.name
    assert len((out / "grid.csv").read_text().strip().splitlines()) == 3  # a header and one row per pair
    assert (out / "grid.png").read_bytes().startswith(b"\x89PNG")
    assert "grid: " in capsys.readouterr().out
    message = helpers.cli_error(capsys, [*argv])  # a grid needs a folder for its results
    assert "--out" in message


def test_a_grid_checks_every_dataset_first_and_names_models_apart(tiny_config, cifar_root, tmp_path, capsys):
    for folder in ("a", "b"):  # two configs of one file name in two folders
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "m.json").write_text(tiny_config.read_text())
    models = f"{tmp_path / 'a' / 'm.json'},{tmp_path / 'b' / 'm.json'}"
    argv = ["eval", "--model", models, "--pretrained", "random", "--data-root", str(cifar_root), "--quiet"]
    argv += ["--templates", "seed", "--ensemble", "logit", "--limit", "4", "--no-cache"]
    typo = helpers.cli_error(capsys, [*argv, "--dataset", "cifar100,cifar1000", "--out", str(tmp_path / "typo")])
    assert "unknown dataset 'cifar1000'" in typo and not (tmp_path / "typo").exists()  # nothing evaluated first
    report = [*argv, "--dataset", "cifar100", "--out", str(tmp_path / "g"), "--report", str(tmp_path / "r")]
    assert "--report makes the report of one run" in helpers.cli_error(capsys, report)
    assert main([*argv, "--dataset", "cifar100", "--out", str(tmp_path / "g")]) == 0
    written = sorted(p.name for p in (tmp_path / "g").glob("*.json"))
    assert len(written) == 2 and written[0].endswith("_a_m.json") and written[1].endswith("_b_m.json")
    rows = (tmp_path / "g" / "grid.md").read_text()
    assert "m.json [1]" in rows and "m.json [2]" in rows
