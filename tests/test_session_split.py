"""The session's parts: one interface for every session-like class, public import paths, module sizes."""

import ast
from pathlib import Path

import numpy as np

from napari_msam.baselines import RandomWalkerSession
from napari_msam.evaluation import run_protocol
from napari_msam.session import ClickResult, Session, SessionLike, pick_device
from napari_msam.session_like import ClickResult as InterfaceClickResult

SRC = Path(__file__).resolve().parents[1] / "src" / "napari_msam"
SPLIT = ["session.py", "session_like.py", "predictor.py", "tiling.py", "object_mask.py", "boxes.py", "additions.py"]


def test_every_session_offers_the_interface_and_runs_the_protocol(threshold_loaded, blob_case):
    _, gt = blob_case
    img = np.where(gt, 1.0, -1.0).astype(np.float32)
    assert ClickResult is InterfaceClickResult and pick_device("cpu") == "cpu"
    for s in (Session(threshold_loaded, device="cpu"), RandomWalkerSession()):
        assert isinstance(s, SessionLike)
        s.set_image(img, (1.0, 1.0, 1.0))
        res = run_protocol(s, gt, n_clicks=2, strategy="center")
        assert len(res.records) >= 1 and res.records[0].dice > 0.3
        assert s.zoom == 1.0 and s.device == "cpu"


def test_the_session_modules_stay_small():
    for name in SPLIT:
        text = (SRC / name).read_text()
        assert len(text.splitlines()) <= 600, name
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                assert node.end_lineno - node.lineno + 1 <= 350, (name, node.name)

