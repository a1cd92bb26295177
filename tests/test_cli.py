import json
import os
import subprocess
import sys

import helpers
import pytest

from clipzs import datasets, models
from clipzs.cli import main
from clipzs.ensemble import METHODS, all_subsets


@pytest.fixture
def eval_args(tiny_args):
    return ["eval", *tiny_args]


def test_preset_seed_runs_offline_with_local_files_and_writes_the_full_sweep(eval_args, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main([*eval_args, "--preset", "seed", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
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
    printed = capsys.readouterr().out
    assert "Wow look at {}!" in printed and "acc1 of every template subset" in printed
    assert len([line for line in printed.splitlines() if line.startswith("{")]) == 31  # one row per subset


def test_single_templates_agree_with_singleton_ensembles(eval_args, tmp_path):
    out = tmp_path / "r.json"
    assert main([*eval_args, "--sweep", "--ensemble", "logit,vote-seed", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    for t, single in enumerate(results["single"]):
        for e in results["ensembles"]:
            if e["templates"] == [t]:
                assert e["acc1"] == single["acc1"]


def test_without_sweep_each_method_uses_all_templates(eval_args, tmp_path):
    out = tmp_path / "r.json"
    assert main([*eval_args, "--templates", "cifar", "--classnames", "clip", "--limit", "10", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["num_images"] == 10 and "aquarium fish" in results["classes"]
    assert [e["templates"] for e in results["ensembles"]] == [list(range(18))] * len(METHODS)


def test_console_script_runs_in_a_fresh_process(eval_args, tmp_path):
    clipzs = os.path.join(os.path.dirname(sys.executable), "clipzs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [clipzs, *eval_args, "--ensemble", "embedding", "--out", str(tmp_path / "r.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "r.json").read_text())["ensembles"][0]["method"] == "embedding"


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clipzs: error: "), captured.err
    return lines[0]


def test_bad_inputs_are_one_line_errors_with_nonzero_exit(eval_args, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    bad_templates = tmp_path / "t.txt"
    bad_templates.write_text("a photo of {}\nno placeholder here\n")
    assert "no placeholder here" in _error(capsys, [*eval_args, "--templates", str(bad_templates)])
    assert "unknown model 'ViT-Z/1'" in _error(capsys, [*eval_args, "--model", "ViT-Z/1"])
    assert "unknown ensemble method" in _error(capsys, [*eval_args, "--ensemble", "median"])

    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    assert "truncated" in _error(capsys, [*eval_args, "--pretrained", str(truncated)])

    many = tmp_path / "many.txt"
    many.write_text("\n".join(f"photo {i} of {{}}" for i in range(13)))
    assert "limited to 12 templates" in _error(capsys, [*eval_args, "--templates", str(many), "--sweep"])

    url = helpers.refused_url("cifar-100-python.tar.gz")
    monkeypatch.setitem(
        datasets.CIFAR, "cifar100", datasets.CifarSpec(**{**vars(datasets.CIFAR["cifar100"]), "url": url})
    )
    assert url in _error(capsys, [*eval_args, "--data-root", str(tmp_path / "empty")])


def test_missing_openai_weights_fail_fast_with_the_download_error(cifar_root, tmp_path, capsys, monkeypatch):
    url = helpers.refused_url("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
    monkeypatch.setitem(models.OPENAI_MODELS, "ViT-B/32", {**models.OPENAI_MODELS["ViT-B/32"], "url": url})
    message = _error(capsys, ["eval", "--preset", "seed", "--data-root", str(cifar_root), "--cache-dir", str(tmp_path)])
    assert url in message and str(tmp_path / "ViT-B-32.pt") in message
    assert "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af" in message


def test_wrong_sha256_in_cache_without_network_says_so(cifar_root, tmp_path, capsys, monkeypatch):
    url = helpers.refused_url("40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt")
    monkeypatch.setitem(models.OPENAI_MODELS, "ViT-B/32", {**models.OPENAI_MODELS["ViT-B/32"], "url": url})
    (tmp_path / "ViT-B-32.pt").write_bytes(b"partial download")
    message = _error(capsys, ["eval", "--preset", "seed", "--data-root", str(cifar_root), "--cache-dir", str(tmp_path)])
    assert "wrong SHA256" in message


def test_eval_report_and_report_command_write_the_same_files(eval_args, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert main([*eval_args, "--sweep", "--limit", "12", "--out", str(out), "--report", str(tmp_path / "a")]) == 0
    assert main(["report", str(out)]) == 0
    for folder in (tmp_path / "a", tmp_path / "results-report"):
        names = {p.name for p in folder.iterdir()}
        assert {"results.json", "results.csv", "summary.md", "report.html"} <= names
        assert len([n for n in names if n.endswith(".png")]) == 4
        assert "<img" in (folder / "report.html").read_text() and "example" in (folder / "report.html").read_text()
    assert "report: " in capsys.readouterr().out
    assert "cannot read results" in _error(capsys, ["report", str(tmp_path / "missing.json")])


def test_templates_and_models_listings(capsys, tmp_path):
    assert main(["templates", "list"]) == 0
    listing = capsys.readouterr().out
    assert "seed" in listing and "18 templates" in listing and "80 templates" in listing
    assert main(["templates", "show", "seed"]) == 0
    assert "  3  Wow look at {}!" in capsys.readouterr().out
    (tmp_path / "ViT-B-32.pt").write_bytes(b"x")
    assert main(["models", "list", "--cache-dir", str(tmp_path)]) == 0
    rows = {tuple(line.split()[:2]): line for line in capsys.readouterr().out.splitlines()}
    assert rows[("ViT-B/32", "openai")].rstrip().endswith("yes")
    assert not rows[("RN50", "openai")].rstrip().endswith("yes")
    assert ("ViT-B-32", "laion2b_s34b_b79k") in rows


def test_class_specific_prompts_run_with_score_methods(eval_args, tmp_path):
    sentences = {c.replace("_", " "): [f"a photo of a {c}.", f"{c}, in the wild"] for c in helpers.CIFAR100_CLASSES}
    sentences["apple"].append("a red fruit")
    cupl = tmp_path / "cupl.json"
    cupl.write_text(json.dumps(sentences))
    out = tmp_path / "r.json"
    assert main([*eval_args, "--templates", str(cupl), "--ensemble", "logit,embedding,carprt", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["templates"] == ["class-specific 1", "class-specific 2", "class-specific 3"]
    assert [e["method"] for e in results["ensembles"]] == ["logit", "embedding", "carprt"]


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
