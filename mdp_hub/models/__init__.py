"""timm model registrations of mdp_hub (importing this registers the mdp_* architectures)."""

from . import mdp_resnet

__all__ = ["mdp_resnet"]
