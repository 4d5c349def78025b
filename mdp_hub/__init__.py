"""mdp-hub: MDP (arXiv 2106.04121) segmentation backbones as drop-in timm / torch.hub / Hugging Face Hub weights.

``import mdp_hub`` registers ``mdp_resnet18``, ``mdp_resnet50`` and ``mdp_resnet101`` with timm, one
pretrained tag per recipe of the paper::

    import timm, mdp_hub
    model = timm.create_model("mdp_resnet50", pretrained=True, features_only=True, output_stride=8)
"""

from . import models  # noqa: F401  (registers the mdp_* architectures with timm)
from .cache import install_export, is_cached, prefetch
from .convert import convert
from .errors import CheckpointError, PrototypesNotFoundError, WeightsNotAvailableError
from .export import export
from .listing import list_weights
from .prototypes import centred_prototype_logits, load_prototypes
from .segmenter import PrototypeSegmenter

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "centred_prototype_logits",
    "PrototypesNotFoundError",
    "WeightsNotAvailableError",
    "convert",
    "export",
    "install_export",
    "is_cached",
    "list_weights",
    "load_prototypes",
    "prefetch",
    "PrototypeSegmenter",
    "__version__",
]
