import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipzs.cli import main
from clipzs.ensemble import combine, scores
from clipzs.errors import ClipzsError
from clipzs.pipeline import Setup, compare, parse_spec, select, split_for_selection
from clipzs.selection import best_of_path, best_subset, greedy_forward


def synthetic(n: int = 300, informative: tuple[int, ...] = (1, 3), templates: int = 5, seed: int = 0):
    """Scores where only the `informative` templates carry the label; the others are noise."""
    g = torch.Generator().manual_seed(seed)
    classes, dim = 6, 12
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1)
    labels = torch.arange(n) % classes
    image = F.normalize(centres[labels] + 0.9 * torch.randn(n, dim, generator=g), dim=1)
    text = F.normalize(torch.randn(templates, classes, dim, generator=g), dim=2)
    for t in informative:
        text[t] = F.normalize(centres + 0.5 * torch.randn(classes, dim, generator=g), dim=1)
    return scores(image, text, 100.0), text, labels


def test_greedy_and_best_subset_find_the_informative_templates():
    all_scores, text, labels = synthetic()
    path = greedy_forward("embedding", all_scores, text, labels)
    assert [len(s) for s, _ in path] == [1, 2, 3, 4, 5] and path[-1][0] == (0, 1, 2, 3, 4)
    assert set(path[0][0]) <= {1, 3}
    chosen, accuracy = best_of_path(path)
    assert set(chosen) <= {1, 3} and accuracy == max(a for _, a in path)
    subset, best = best_subset("embedding", all_scores, text, labels)
    assert set(subset) <= {1, 3} and best >= accuracy
    noise_only = (combine("embedding", all_scores, text, (0, 2, 4)).pred == labels).float().mean().item()
    assert best > noise_only + 0.2


def test_selection_images_never_include_an_evaluation_image(cifar_root):
    shared = Setup(data_root=cifar_root, split="test")
    chooser, chooser_index, evaluation, evaluation_index = split_for_selection(shared, "test", 15, seed=3)
    assert len(chooser) == 15 and len(evaluation) == 25
    assert set(chooser_index.tolist()).isdisjoint(evaluation_index.tolist())
    assert sorted([*chooser_index.tolist(), *evaluation_index.tolist()]) == list(range(40))
    assert np.array_equal(chooser.pixels, shared_images(cifar_root).pixels[chooser_index])

    chooser, chooser_index, evaluation, evaluation_index = split_for_selection(shared, None, 20, seed=0)
    assert chooser.split == "train" and evaluation.split == "test" and len(evaluation) == 40
    with pytest.raises(ClipzsError, match="leaves no evaluation images"):
        split_for_selection(shared, "test", 40, seed=0)


def shared_images(root):
    from clipzs.datasets import load_cifar

    return load_cifar("cifar100", root, "test")


def test_select_reports_chosen_subsets_on_the_evaluation_images(tiny_config, tiny_checkpoint, cifar_root):
    options = dict(model=str(tiny_config), pretrained=str(tiny_checkpoint), data_root=cifar_root, progress=False)
    results = select(ensemble="embedding,vote", select_split="test", select_size=10, seed=1, **options)
    assert set(results["selection"]["indices"]).isdisjoint(results["evaluation_indices"])
    assert results["num_images"] == 30 and results["selection"]["num_images"] == 10
    for row in results["methods"]:
        for key in ("greedy", "best_subset", "all_templates", "test_set_best"):
            low, high = row[key]["acc1_ci"]
            assert low <= row[key]["acc1"] <= high
        assert row["test_set_best"]["optimistic"] and row["test_set_best"]["acc1"] >= row["greedy"]["acc1"]
        assert len(row["greedy"]["path"]) == 5


def test_compare_specs_and_mcnemar(tiny_config, tiny_checkpoint, cifar_root, tiny_args, capsys):
    assert parse_spec("embedding", 5) == ("embedding", (0, 1, 2, 3, 4))
    assert parse_spec("vote-seed:3+1", 5) == ("vote-seed", (0, 2))
    assert parse_spec("template:4", 5) == (None, (3,)) == parse_spec("4", 5)
    for bad in ("template:1+2", "embedding:9", "median", "logit:x"):
        with pytest.raises(ClipzsError):
            parse_spec(bad, 5)
    options = dict(model=str(tiny_config), pretrained=str(tiny_checkpoint), data_root=cifar_root, progress=False)
    results = compare("embedding", "template:3", **options)
    assert results["a"]["label"] == "embedding{1,2,3,4,5}" and results["b"]["label"] == "template 3"
    assert results["a"]["acc1"] - results["b"]["acc1"] == pytest.approx((results["a_only"] - results["b_only"]) / 40)
    assert main(["compare", "logit:1+2", "2", *tiny_args]) == 0
    assert "exact McNemar p = " in capsys.readouterr().out
    assert main(["select", "--select-size", "10", *tiny_args]) == 0
    assert "optimistic" in capsys.readouterr().out
