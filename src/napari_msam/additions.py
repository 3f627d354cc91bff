"""Inference-time additions that are not M-SAM, and which checkpoints were validated with them.

M-SAM's own inference is one refinement per click: the newest click plus the previous low-resolution
logits. This project can add four things around it: edge refinement (a random walker snaps the mask to
image edges), test-time flip views, the click prior (every click painted into the mask prompt) and zoom-out
for large objects. Each changes what the network's weights produce, so each is on by default only where a
checkpoint says it was trained or measured with it; reference SAM-Med3D and M-SAM checkpoints carry no
such metadata and give the paper's output unless the user asks for more.

Checkpoint metadata read here:

* ``"click_prior"`` and ``"roi_zoom"``: written by training (the model learnt with them).
* ``"inference": {"edge_refine": [modalities], "tta": K}``: additions measured on validation data with
  this checkpoint: edge refinement on images of these modalities, ``K`` flip views.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

ADDITIONS = ("edge_refine", "tta", "click_prior", "roi_zoom")


@dataclass(frozen=True)
class Validated:
    """The inference additions a checkpoint's metadata says it was validated with."""

    edge_refine: tuple[str, ...] = ()  # modalities where edge refinement was measured to help
    tta: int = 1  # flip views measured to help (1: none)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> Validated:
        d = metadata.get("inference") if isinstance(metadata, Mapping) else None
        if not isinstance(d, Mapping):
            return cls()
        mods = d.get("edge_refine") or ()
        if isinstance(mods, str):
            mods = (mods,)
        try:
            tta = int(d.get("tta", 1))
        except (TypeError, ValueError):
            tta = 1
        return cls(edge_refine=tuple(str(m) for m in mods), tta=max(1, tta))

    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {"edge_refine": list(self.edge_refine)}
        if self.tta > 1:
            out["tta"] = self.tta
        return out
