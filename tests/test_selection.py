"""Template selection (greedy forward, best subset), `select` on held-out images, and `compare`."""

import helpers
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clipzs.cli import main
from clipzs.encode import encode_images, encode_prompts
from clipzs.ensemble import METHODS, all_subsets
from clipzs.errors import ClipzsError
from clipzs.models import load_model
from clipzs.pipeline import compare, parse_spec, select
from clipzs.prompts import class_names, load_templates
from clipzs.scoring import Features, Scores, predictions
from clipzs.selection import best_of_path, best_subset, greedy_forward
from clipzs.sources.cifar import load_cifar


def synthetic(n: int = 300, informative: tuple[int, ...] = (1, 3), templates: int = 5, seed: int = 0) -> Features:
    """Features where only the `informative` templates carry the label; the others are noise."""
    g = torch.Generator().manual_seed(seed)
    classes, dim = 6, 12
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=1)
    labels = torch.arange(n) % classes
    image = F.normalize(centres[labels] + 0.9 * torch.randn(n, dim, generator=g), dim=1)
    text = F.normalize(torch.randn(templates, classes, dim, generator=g), dim=2)
    for t in informative:
        text[t] = F.normalize(centres + 0.5 * torch.randn(classes, dim, generator=g), dim=1)
    return Features(image, text, labels, 100.0)


def accuracy(scores: Scores, method: str, subset: tuple[int, ...]) -> float:
    pred = predictions(scores, [(method, subset)])[0]
    return (pred == scores.features.labels).float().mean().item()


def test_greedy_and_best_subset_find_the_informative_templates():
    scores = Scores(synthetic())
    path = greedy_forward("embedding", scores)
    assert [len(s) for s, _ in path] == [1, 2, 3, 4, 5] and path[-1][0] == (0, 1, 2, 3, 4)
    assert set(path[0][0]) <= {1, 3}
    chosen, acc = best_of_path(path)
    assert set(chosen) <= {1, 3} and acc == max(a for _, a in path)
    subset, best = best_subset("embedding", scores)
    assert set(subset) <= {1, 3} and best >= acc
    assert best > accuracy(scores, "embedding", (0, 2, 4)) + 0.2


def reference_greedy(scores: Scores, method: str) -> list[tuple[tuple[int, ...], int]]:
    """Greedy forward selection by brute force: every candidate subset scored on its own (hits, not fractions)."""
    num_templates, labels = scores.features.text.shape[0], scores.features.labels
    chosen: list[int] = []
    path = []
    while len(chosen) < num_templates:
        candidates = [t for t in range(num_templates) if t not in chosen]
        subsets = [tuple(sorted([*chosen, t])) for t in candidates]
        hits = [(p == labels).sum().item() for p in predictions(scores, [(method, s) for s in subsets])]
        pick = hits.index(max(hits))  # the first maximum: the lowest template index
        chosen.append(candidates[pick])
        path.append((subsets[pick], hits[pick]))
    return path


@pytest.mark.parametrize("method", [*METHODS, "zpe+balanced"])  # balanced greedy steps are `score_rows` itself
def test_greedy_and_best_subset_agree_with_brute_force(method):
    scores = Scores(synthetic(n=120, informative=(2,), templates=4, seed=1), block=64)
    n = len(scores)
    path = greedy_forward(method, scores)
    assert [(s, round(a * n)) for s, a in path] == reference_greedy(scores, method)
    assert all(a * n == pytest.approx(round(a * n), abs=1e-3) for _, a in path)
    subsets = all_subsets(4)
    hits = [(p == scores.features.labels).sum().item() for p in predictions(scores, [(method, s) for s in subsets])]
    first_best = hits.index(max(hits))
    assert best_subset(method, scores) == (subsets[first_best], pytest.approx(hits[first_best] / n))


@pytest.fixture(scope="module")
def options(tiny_config, tiny_checkpoint, cifar_root):
    return dict(
        model=str(tiny_config), pretrained=str(tiny_checkpoint), data_root=cifar_root, progress=False, templates="seed"
    )


@pytest.fixture(scope="module")
def test_features(tiny_config, tiny_checkpoint, cifar_root) -> Features:
    """The 40 test images and the seed prompts with CLIP's class names, encoded directly (not through select)."""
    clip = load_model(str(tiny_config), str(tiny_checkpoint))
    images = load_cifar("cifar100", cifar_root, "test")
    names = class_names("cifar100", images.classes, "clip")
    image = encode_images(clip, images, batch_size=8, progress=False).features
    text = encode_prompts(clip, load_templates("seed"), names).features
    return Features(image, text, torch.from_numpy(images.labels), clip.logit_scale)


def test_selection_images_never_include_an_evaluation_image(options, test_features):
    result = select(ensemble="embedding", select_split="test", select_size=15, seed=3, **options)
    chooser, evaluation = result.selection.indices, result.evaluation_indices
    assert result.selection.split == "test" and result.selection.num_images == len(chooser) == 15
    assert len(evaluation) == 25 == result.run.num_images
    assert set(chooser).isdisjoint(evaluation)
    assert sorted([*chooser, *evaluation]) == list(range(40))
    assert result.run.encoded["images"] == 40  # one encoding of the split, divided
    # the templates were chosen on exactly those images, and reported on exactly the others
    (row,) = result.methods
    on_chooser = Scores(test_features.subset(torch.tensor(chooser)))
    assert row.greedy.path == tuple(greedy_forward("embedding", on_chooser))
    on_evaluation = Scores(test_features.subset(torch.tensor(evaluation)))
    assert row.all_templates.acc1 == pytest.approx(accuracy(on_evaluation, "embedding", (0, 1, 2, 3, 4)))
    assert row.greedy.acc1 == pytest.approx(accuracy(on_evaluation, "embedding", row.greedy.templates))

    result = select(ensemble="embedding", select_size=20, seed=0, **options)
    assert result.selection.split == "train" and result.run.split == "test" and result.run.num_images == 40
    assert result.selection.num_images == 20 and len(set(result.selection.indices)) == 20
    assert all(0 <= i < 60 for i in result.selection.indices)
    assert result.evaluation_indices == tuple(range(40))
    with pytest.raises(ClipzsError, match="leaves no evaluation images") as error:
        select(select_split="test", select_size=40, **options)
    assert error.value.parameter == "select_size"


def test_select_reports_chosen_subsets_on_the_evaluation_images(options):
    result = select(ensemble="embedding,vote", select_split="test", select_size=10, seed=1, **options)
    assert set(result.selection.indices).isdisjoint(result.evaluation_indices)
    assert result.run.num_images == 30 and result.selection.num_images == 10
    assert [row.method for row in result.methods] == ["embedding", "vote"]
    for row in result.methods:
        for key in ("greedy", "best_subset", "all_templates", "test_set_best"):
            choice = getattr(row, key)
            low, high = choice.acc1_ci
            assert low <= choice.acc1 <= high, key
        assert row.test_set_best.optimistic and row.test_set_best.acc1 >= row.greedy.acc1
        assert row.test_set_best.acc1 >= row.best_subset.acc1 and row.test_set_best.acc1 >= row.all_templates.acc1
        assert not row.greedy.optimistic and not row.best_subset.optimistic
        assert len(row.greedy.path) == 5
        assert row.best_subset.selection_acc1 >= row.greedy.selection_acc1
    assert result.run.options["select_size"] == 10 and result.run.options["seed"] == 1


@pytest.fixture(scope="module")
def cifar10_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar10")
    helpers.write_cifar10(root, n_per_batch=8)
    return root


def test_select_with_more_templates_than_a_sweep_takes_uses_greedy_only(options, cifar10_root):
    """CIFAR-10 (10 classes, so the 18 templates make only 180 prompts), chosen on 10 of its train images."""
    setup = {**options, "dataset": "cifar10", "data_root": cifar10_root, "templates": "cifar"}
    result = select(select_size=10, **setup)
    assert len(result.run.templates) == 18 and result.selection.split == "train"
    assert result.selection.num_images == 10 and result.run.num_images == 8
    (row,) = result.methods
    assert row.best_subset is None
    assert len(row.greedy.path) == 18 and row.greedy.path[-1][0] == tuple(range(18))
    assert row.all_templates.templates == tuple(range(18))
    assert row.test_set_best is not None and row.test_set_best.optimistic


def test_compare_specs_and_mcnemar(options, tiny_args, capsys):
    assert parse_spec("embedding", 5) == ("embedding", (0, 1, 2, 3, 4))
    assert parse_spec("vote-seed:3+1", 5) == ("vote-seed", (0, 2))
    assert parse_spec("template:4", 5) == (None, (3,)) == parse_spec("4", 5)
    for bad in ("template:1+2", "embedding:9", "median", "logit:x"):
        with pytest.raises(ClipzsError):
            parse_spec(bad, 5)
    result = compare("embedding", "template:3", **options)
    assert result.a.label == "embedding{1,2,3,4,5}" and result.b.label == "template 3"
    assert result.a.acc1 - result.b.acc1 == pytest.approx((result.a_only - result.b_only) / 40)
    for side in (result.a, result.b):
        assert side.acc1_ci[0] <= side.acc1 <= side.acc1_ci[1]
    assert 0 < result.p_value <= 1
    assert main(["compare", "logit:1+2", "2", *tiny_args, "--templates", "seed"]) == 0
    assert "exact McNemar p = " in capsys.readouterr().out
    assert main(["select", "--select-size", "10", *tiny_args, "--templates", "seed"]) == 0
    assert "optimistic" in capsys.readouterr().out


def test_selection_indices_are_reproducible_for_a_seed(options):
    a = select(select_split="test", select_size=12, seed=5, **options)
    b = select(select_split="test", select_size=12, seed=5, **options)
    c = select(select_split="test", select_size=12, seed=6, **options)
    assert a.selection.indices == b.selection.indices != c.selection.indices
    assert np.all(np.diff(a.selection.indices) > 0)
