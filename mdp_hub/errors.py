"""Exceptions raised by mdp_hub; each message names the file or repository and what is wrong."""


class CheckpointError(ValueError):
    """A weights file exists but cannot be used: unsafe pickle, corrupt, or wrong tensors for the model."""


class WeightsNotAvailableError(FileNotFoundError):
    """Pretrained weights for a tag are neither in the local cache nor reachable on the Hugging Face Hub."""

    def __str__(self) -> str:
        # FileNotFoundError would otherwise format a single argument as "(errno) message".
        return str(self.args[0]) if self.args else ""


class PrototypesNotFoundError(FileNotFoundError):
    """An export folder or repository has no ``mdp_prototypes.safetensors`` (backbone-only export)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
