"""The MDP pretraining method and its baselines (see docs/ARCHITECTURE.md, "Trainer <-> method interface")."""

from training.mdp.method import METHODS, PretrainMethod, build_method, method_options
from training.mdp.model import momentum_schedule
from training.mdp.pseudo_label import pseudo_label

__all__ = ["METHODS", "PretrainMethod", "build_method", "method_options", "momentum_schedule", "pseudo_label"]
