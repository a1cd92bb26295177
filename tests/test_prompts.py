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
    with pytest.raises(ClipzsError, match="neither a built-in set .*, 'dataset', a catalogued dataset nor a file"):
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


def test_dataset_templates_come_from_the_catalogue_the_source_or_the_imagenet_fallback():
    from clipzs.prompts import dataset_templates

    assert load_templates("dataset", "sun397") == ["a photo of a {}.", "a photo of the {}."]
    assert load_templates("dataset", "cifar100") == load_templates("cifar")
    assert load_templates("stanford_cars")[3] == "i love my {}!"  # a catalogued dataset named directly
    own = dataset_templates("wds/vtab/cifar10", ["itap of a {}.", " "])
    assert own.templates == ["itap of a {}."] and own.note is None
    fallback = dataset_templates("folder")
    assert fallback.templates == load_templates("imagenet80") and "folder is not in the catalogue" in fallback.note


def test_dataset_prompts_carry_the_fallback_note():
    from clipzs.prompts import dataset_prompts

    prompts = dataset_prompts("dataset", "mnist", ["0", "1"])
    assert prompts.names == ['a photo of the number: "{}".'] and prompts.prompts == [
        ['a photo of the number: "0".', 'a photo of the number: "1".']
    ]
    assert prompts.note is None
    assert "CLIP's 80 generic ImageNet templates" in dataset_prompts("dataset", "csv", ["a"]).note
    assert dataset_prompts("seed", "csv", ["a"]).note is None


def test_class_names_raw_clip_and_count_check():
    from clipzs.prompts import class_names

    raw = ["Abyssinian", "american_bulldog"]
    assert class_names("folder", raw, "raw") == raw
    assert class_names("folder", raw, "clip") == ["Abyssinian", "american bulldog"]
    pets = class_names("oxford_pets", [f"c{i}" for i in range(37)], "clip")
    assert pets[:3] == ["Abyssinian", "american bulldog", "american pit bull terrier"]
    with pytest.raises(ClipzsError, match="catalogue has 37 CLIP class names for oxford_pets but the source has 2"):
        class_names("oxford_pets", raw, "clip")
    with pytest.raises(ClipzsError, match="unknown class-name style 'fancy'"):
        class_names("oxford_pets", raw, "fancy")


def test_clip_benchmark_custom_classname_file(tmp_path):
    import json

    from clipzs.prompts import class_names

    path = tmp_path / "names.json"
    path.write_text(json.dumps({"pets": ["cat", "dog"], "vtab/cifar10": ["x", "y", "z"], "bad": [1, 2]}))
    assert class_names("oxford_pets", ["a", "b"], str(path)) == ["cat", "dog"]  # CLIP_benchmark calls it "pets"
    assert class_names("wds/vtab/cifar10", ["a", "b", "c"], str(path)) == ["x", "y", "z"]
    with pytest.raises(ClipzsError, match=r"no entry for dataset dtd \(looked for dtd\); it has pets, vtab/cifar10"):
        class_names("dtd", ["a"], str(path))
    with pytest.raises(ClipzsError, match=r"\[pets\] has 2 class names but the source has 3 classes"):
        class_names("oxford_pets", ["a", "b", "c"], str(path))
    with pytest.raises(ClipzsError, match=r"\[bad\] must be a list of class names"):
        class_names("bad", ["a", "b"], str(path))
    path.write_text("[1]")
    with pytest.raises(ClipzsError, match="must be a non-empty JSON object: dataset -> class names"):
        class_names("oxford_pets", ["a"], str(path))


def test_clip_benchmark_custom_template_file(tmp_path):
    import json

    from clipzs.prompts import prompt_set, read_prompts

    path = tmp_path / "templates.json"
    path.write_text(
        json.dumps(
            {
                "imagenet1k": ["a photo of a {c}.", "itap of a {c}."],
                "cars": {"a b": ["a b, a car"], "c": ["c, a car", "c, a vehicle"]},
                "flowers": ["no placeholder"],
            }
        )
    )
    assert read_prompts(str(path), "imagenet1k") == ["a photo of a {}.", "itap of a {}."]
    cars = prompt_set(read_prompts(str(path), "stanford_cars"), ["a_b", "c"])
    assert cars.prompts == [["a b, a car", "c, a car"], ["a b, a car", "c, a vehicle"]]
    with pytest.raises(ClipzsError, match=r"has no entry for dataset dtd"):
        read_prompts(str(path), "dtd")
    with pytest.raises(ClipzsError, match=r"template 1 in .*\[flowers\] has no {}"):
        read_prompts(str(path), "flowers102")


def test_overlong_prompts_are_named_with_their_token_counts():
    import open_clip

    from clipzs.prompts import overlong_prompts

    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    long_a, long_b = "a photo of " + "very " * 100 + "red cat", "a photo of " + "very " * 100 + "blue cat"
    counts = overlong_prompts(["a cat", long_a, long_b, long_a], lambda p: len(tokenizer.encode(p)) + 2)
    assert counts == [(long_a, 107), (long_b, 107)]
    assert bool((tokenizer([long_a]) == tokenizer([long_b])).all())  # why they are reported: cut, they are equal
    assert overlong_prompts(["a b c"], lambda p: len(p.split()) + 2, context_length=4) == [("a b c", 5)]


def test_a_json_of_class_sentences_is_refused_where_templates_with_braces_are_needed(tmp_path):
    sentences = tmp_path / "cupl.json"
    sentences.write_text('{"cat": ["a fluffy cat"], "dog": ["a loyal dog"]}')
    with pytest.raises(ClipzsError, match=r"a \.json of class-specific sentences is for eval, select and compare"):
        load_templates(str(sentences))
