"""clipzs: zero-shot image classification with CLIP and prompt ensembling."""

__version__ = "0.1.0"

from .classifier import ZeroShotClassifier  # noqa: E402
from .errors import ClipzsError  # noqa: E402
from .models import load_model  # noqa: E402
from .pipeline import evaluate  # noqa: E402

__all__ = ["ClipzsError", "ZeroShotClassifier", "__version__", "evaluate", "load_model"]
