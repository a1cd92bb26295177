"""clipzs's Python API in a few lines.

python examples/api.py                      # offline: random ViT-B/32 weights, so the answers are arbitrary
python examples/api.py --pretrained openai  # OpenAI's weights (downloaded once to ~/.cache/clip)
python examples/api.py --model RN50 --pretrained openai  # any model `clipzs models list` names
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from clipzs import ZeroShotClassifier
from clipzs.classifier import predict_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B/32", help="a model name or config .json (default ViT-B/32)")
    parser.add_argument("--pretrained", default="random", help="openai, a checkpoint file, or random (default)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for name in ("cat.jpg", "dog.png"):
        Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(folder / name)
    images = [folder / "cat.jpg", folder / "dog.png"]

    clf = ZeroShotClassifier(args.model, pretrained=args.pretrained, classnames=["cat", "dog", "car"])
    probs = clf.predict_proba(images)  # numpy [2, 3]; rows sum to 1, columns follow clf.classes
    labels = [clf.classes[i] for i in clf.predict(images)]
    print("probabilities:", [[round(float(p), 3) for p in row] for row in probs])
    print("labels:", labels)
    for row in predict_files([folder], clf, topk=2):  # every image in the folder, recursively
        print(row)


if __name__ == "__main__":
    main()
