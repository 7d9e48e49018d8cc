"""What the widgets share within one napari session: the most recently trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from psygnal import Signal

from napari_unetkit.model import UNet
from napari_unetkit.modelfile import ModelDescription


@dataclass(frozen=True)
class TrainedModel:
    """A model trained in this session.

    Attributes
    ----------
    model : UNet
        The network (best weights, eval mode, on the CPU).
    description : dict
        Its description, as stored in the model file.
    path : pathlib.Path or None
        Where it was saved, if it was.
    """

    model: UNet
    description: ModelDescription
    path: Path | None


class ModelSession:
    """Holds the latest trained model and tells listeners (the Predict widget) when it changes."""

    changed = Signal(object)

    def __init__(self) -> None:
        self.latest: TrainedModel | None = None

    def publish(self, trained: TrainedModel) -> None:
        """Make ``trained`` the latest model and notify listeners."""
        self.latest = trained
        self.changed.emit(trained)


#: The session shared by every widget of this process.
SESSION = ModelSession()
