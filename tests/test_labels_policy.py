"""ObjectWrites (Qt-free): exact restore across growing boxes, memory only over the object's box, and a
label id changed mid-object relabels the whole object."""

from __future__ import annotations

import numpy as np

from napari_msam.widgets.labels_policy import ObjectWrites, timing_text


class _Layer:
    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.refreshes = 0

    def refresh(self) -> None:
        self.refreshes += 1


def _box(a, b):
    return tuple(slice(x, y) for x, y in zip(a, b, strict=True))


def test_restore_is_exact_after_writes_in_growing_boxes():
    rng = np.random.default_rng(0)
    original = np.zeros((40, 60, 50), np.uint16)
    original[5:9, 10:20, 10:20] = 3  # someone else's object
    layer = _Layer(original.copy())
    w = ObjectWrites()
    w.start(layer)
    assert w.active and w.box is None and w.voxels == 0
    boxes = [_box((4, 8, 8), (12, 22, 22)), _box((10, 30, 30), (20, 50, 45)), _box((0, 0, 0), (6, 12, 9))]
    for policy in ("keep existing", "overwrite", "only empty"):
        for bb in boxes:
            mask = rng.random(tuple(s.stop - s.start for s in bb)) > 0.5
            w.write(bb, mask, 1, policy)
            if policy != "overwrite":  # the other object survives (undone writes included)
                assert (layer.data[original == 3] == 3).all()
    # the record spans only the union of the boxes, not the volume
    assert w.written.shape == (20, 50, 45) and w.voxels > 0
    w.restore()
    np.testing.assert_array_equal(layer.data, original)
    assert layer.refreshes == 1 and w.voxels == 0


def test_label_id_change_relabels_the_whole_object():
    layer = _Layer(np.zeros((10, 20, 20), np.uint16))
    layer.data[0, 0, 0] = 1  # an unrelated voxel with the old id, outside the object's writes
    w = ObjectWrites()
    w.start(layer)
    first = _box((0, 2, 2), (4, 8, 8))
    w.write(first, np.ones((4, 6, 6), bool), 1, "keep existing")
    w.relabel(4)  # the user changes the id before the next click
    assert (layer.data[first] == 4).all() and layer.data[0, 0, 0] == 1
    second = _box((5, 10, 10), (8, 14, 14))
    w.write(second, np.ones((3, 4, 4), bool), 4, "keep existing")
    assert set(np.unique(layer.data).tolist()) == {0, 1, 4}
    w.restore()
    assert layer.data.sum() == 1 and layer.data[0, 0, 0] == 1
    w.commit()
    assert not w.active and w.written is None


def test_timing_text_names_the_stages_that_took_time():
    t = {"encode": 0.0, "refine": 0.12, "paste": 0.001, "edges": 0.31, "total": 0.45}
    assert timing_text(t, 9.0) == "0.45 s (refine 0.12, edges 0.31)"
    assert timing_text({}, 0.2) == "0.20 s"
