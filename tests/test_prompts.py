import pytest

from clipzs.errors import ClipzsError
from clipzs.prompts import build_prompts, fill, load_templates


def test_builtin_sets():
    seed = load_templates("seed")
    assert seed == [
        "A photo of a {}",
        "This is a photo of {}",
        "Wow look at {}!",
        "What is {}?",
        "How do you think about {}?",
    ]
    cifar, imagenet = load_templates("cifar"), load_templates("imagenet80")
    assert len(cifar) == 18 and cifar[0] == "a photo of a {}." and cifar[-1] == "a photo of the big {}."
    assert len(imagenet) == 80 and len(set(imagenet)) == 80 and imagenet[0] == "a bad photo of a {}."


def test_template_file_one_per_line(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("a {} in the wild\n\n  an {}, drawn  \n")
    assert load_templates(str(path)) == ["a {} in the wild", "an {}, drawn"]


def test_template_without_placeholder_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a photo of {}\na photo\n")
    with pytest.raises(ClipzsError, match="template 2 .* has no {} .*'a photo'"):
        load_templates(str(path))


def test_unknown_set_and_empty_file(tmp_path):
    with pytest.raises(ClipzsError, match="neither a built-in set"):
        load_templates("nonexistent")
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ClipzsError, match="no templates"):
        load_templates(str(tmp_path / "empty.txt"))


def test_fill_ignores_format_braces():
    assert fill("a {} {with braces}", "cat") == "a cat {with braces}"
    assert build_prompts(["A {}", "B {}!"], ["x", "y_z"]) == [["A x", "A y_z"], ["B x!", "B y_z!"]]


def test_class_specific_sentences_are_aligned_by_position(tmp_path):
    import json

    from clipzs.prompts import prompt_set, read_prompts

    path = tmp_path / "cupl.json"
    path.write_text(
        json.dumps({"aquarium fish": ["fish in a tank", "a small fish"], "cat": ["a cat", "a kitten", "feline"]})
    )
    source = read_prompts(str(path))
    prompts = prompt_set(source, ["cat", "aquarium_fish"])
    assert prompts.names == ["class-specific 1", "class-specific 2", "class-specific 3"]
    assert prompts.prompts == [["a cat", "fish in a tank"], ["a kitten", "a small fish"], ["feline", "fish in a tank"]]
    with pytest.raises(ClipzsError, match="lack 1 classes: dog"):
        prompt_set(source, ["cat", "dog"])
    for bad in ("[1, 2]", '{"cat": []}', '{"cat": [3]}', "{not json"):
        path.write_text(bad)
        with pytest.raises(ClipzsError, match="CuPL format|cannot read"):
            read_prompts(str(path))
