"""The batched pipeline against a literal re-implementation of the original per-image script."""

import torch

from clipzs.datasets import classnames, load_cifar
from clipzs.encode import encode_images, encode_prompts
from clipzs.ensemble import all_subsets, combine, scores
from clipzs.models import load_model
from clipzs.prompts import load_templates


def original_loop(clip, images, templates, names):
    """What the original script did: for each image and template, encode the 100 prompts, take the argmax."""
    model, preprocess, tokenize = clip.model, clip.preprocess, clip.tokenizer
    predictions = []
    for i in range(len(images)):
        image_input = preprocess(images.image(i)).unsqueeze(0)
        preds = []
        for template in templates:
            text_inputs = torch.cat([tokenize([template.format(c)]) for c in names])
            with torch.no_grad():
                image_features = model.encode_image(image_input)
                text_features = model.encode_text(text_inputs)
            image_features /= image_features.norm(dim=-1, keepdim=True)
            text_features /= text_features.norm(dim=-1, keepdim=True)
            similarity = (clip.logit_scale * image_features @ text_features.T).softmax(dim=-1)
            _, indices = similarity[0].topk(1)
            preds.append(indices.item())
        predictions.append(preds)
    return predictions


def test_batched_pipeline_reproduces_the_original_per_image_loop(tiny_config, tiny_checkpoint, cifar_root):
    clip = load_model(str(tiny_config), str(tiny_checkpoint))
    images = load_cifar("cifar100", cifar_root).subset(range(16))
    templates, names = load_templates("seed"), classnames(load_cifar("cifar100", cifar_root).classes, "raw")

    literal = original_loop(clip, images, templates, names)
    all_scores = scores(
        encode_images(clip, images, batch_size=5, progress=False).features,
        encode_prompts(clip, templates, names).features,
        clip.logit_scale,
    )

    assert all_scores.argmax(dim=2).tolist() == literal
    assert len({p for row in literal for p in row}) > 3, "the test model must not predict one class for everything"
    assert any(len(set(row)) == len(row) for row in literal), "some image must exercise the rule's tie order"
    for subset in all_subsets(len(templates)):
        expected = [max(set(p), key=p.count) for p in ([row[t] for t in subset] for row in literal)]
        assert combine("vote-seed", all_scores, None, subset).pred.tolist() == expected, subset
