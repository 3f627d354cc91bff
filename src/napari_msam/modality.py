"""One rule for what kind of scan a volume is, used by the reader, the CLI, the Session, training and
evaluation.

The order of evidence is: what the file declares (a DICOM ``Modality`` tag, a ``dataset.json`` channel
name), then words in the file or layer name, then the intensities (Hounsfield units reach far below 0).
A volume whose intensities are seen and that is none of these is taken as MR: this plugin is for CT
and MRI, and a z-scored MR with no telling name must still get the MR defaults (edge refinement among
them). PET is recognised by its
declaration or its name only; the model sees it as "other".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: What the model's preprocessing distinguishes (CT gets its window; MR and other are z-scored alike).
MODALITIES = ("ct", "mr", "other")
#: What a data set's cases are tagged with (training reports and filters by these).
KINDS = ("ct", "mr", "pet", "other")

_CT_WORDS = {"ct", "cect", "ncct", "cta"}
_MR_WORDS = {"mr", "mri", "t1", "t2", "flair", "t1c", "t1ce", "t1w", "t2w", "t1gd", "dwi", "adc", "swi"}
_PET_WORDS = {"pet", "suv", "fdg"}
_DECLARED = {"ct": "ct", "mr": "mr", "mri": "mr", "pt": "pet", "pet": "pet", "nm": "other"}


@dataclass(frozen=True)
class ModalityGuess:
    """A kind (one of :data:`KINDS`) and where it came from, so a GUI can show a guess as a guess."""

    kind: str
    source: str  # "declared", "name", "intensities", "default" (not CT-like: MR) or "unknown" (no data)

    @property
    def modality(self) -> str:
        """The kind as the model's preprocessing sees it (PET is "other")."""
        return self.kind if self.kind in MODALITIES else "other"

    def describe(self) -> str:
        """A short phrase for a status line, e.g. ``MR (guessed: no CT-like intensities)``."""
        label = self.kind.upper() if self.kind != "other" else "other"
        why = {
            "declared": "from the file header",
            "name": "guessed from the name",
            "intensities": "guessed from the intensities",
            "default": "guessed: not CT-like, taken as MR",
            "unknown": "unknown",
        }[self.source]
        return f"{label} ({why})"


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t]


def kind_from_words(text: str) -> str | None:
    """"ct" / "mr" / "pet" when a word of ``text`` names one (``CT_image``, ``MR_T1``, ``t1ce``), else None."""
    tokens = _tokens(text)
    if any(t in _CT_WORDS or (t.startswith("ct") and t[2:].isdigit()) for t in tokens):
        return "ct"
    if any(t in _PET_WORDS for t in tokens):
        return "pet"
    if any(t in _MR_WORDS or (t.startswith(("mr", "t1", "t2")) and t[2:].isdigit()) for t in tokens):
        return "mr"
    return None


def looks_like_ct(data: np.ndarray) -> bool:
    """True when the intensities look like Hounsfield units: air near -1000 and tissue at or above 0."""
    if data is None or not data.size or data.dtype.kind not in "iuf":
        return False
    step = max(1, int(round((data.size / 100_000) ** (1 / 3)))) if data.ndim == 3 else 1
    sample = np.asarray(data[::step, ::step, ::step] if data.ndim == 3 else data, dtype=np.float32)
    sample = sample[np.isfinite(sample)]
    if not sample.size:
        return False
    return float(np.percentile(sample, 1)) <= -500 and float(np.percentile(sample, 99)) >= 0


def guess(name: str = "", data: np.ndarray | None = None, declared: str | None = None) -> ModalityGuess:
    """Apply the rule: declaration, then name, then intensities, then MR (when ``data`` was seen)."""
    if declared:
        word = str(declared).strip().lower()
        kind = _DECLARED.get(word) or kind_from_words(word)
        if kind:
            return ModalityGuess(kind, "declared")
    kind = kind_from_words(name) if name else None
    if kind:
        return ModalityGuess(kind, "name")
    if data is None:
        return ModalityGuess("other", "unknown")  # nothing seen yet: a name alone cannot rule CT out
    if looks_like_ct(np.asarray(data)):
        return ModalityGuess("ct", "intensities")
    return ModalityGuess("mr", "default")


def guess_modality(name: str = "", data: np.ndarray | None = None, declared: str | None = None) -> str:
    """The model-side modality ("ct", "mr" or "other") that :func:`guess` arrives at."""
    return guess(name, data, declared).modality
