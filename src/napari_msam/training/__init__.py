"""Training / fine-tuning (Qt-free): data, the interaction loop, the trainer, data-parallel helpers."""

from napari_msam.training.config import RunLockedError, TrainConfig, TrainEvent, TrainingError, TrainResult
from napari_msam.training.data import CaseSpec, TrainingDataError, array_case, discover_cases
from napari_msam.training.trainer import Trainer

__all__ = ["CaseSpec", "RunLockedError", "TrainConfig", "TrainEvent", "TrainResult", "Trainer", "TrainingDataError",
           "TrainingError", "array_case", "discover_cases"]
