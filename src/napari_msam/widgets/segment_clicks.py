"""Points -> clicks -> worker jobs -> labels: the object being drawn in the Segment widget.

Every job of the current object carries the object's generation; Reset and Accept start a new one, so a
result that arrives after them is dropped instead of drawing a ghost into the next object. With edge
refinement on, the network's mask is written first and the refined one when it is ready; a newer click
cancels a refinement still waiting.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import MSAMError
from ._utils import friendly
from .job_router import JobRouter
from .jobs import ObjectUpdate, job_accept, job_click, job_refine, job_replay, job_reset, job_undo
from .labels_policy import ObjectWrites, next_free_id, timing_text
from .model_choice import ModelChoice, StatusSink
from .prompts import Prompts
from .ray_pick import brightest_voxel_on_ray
from .segment_layers import LayerChoice
from .segment_ui import SegmentControls
from .workers import JobResult

Click = tuple[tuple[int, int, int], bool]


class ClickInput:
    """The prompts Points layer as the way clicks come in: polarity, readiness, point <-> voxel.

    Holds no clicks of its own: :class:`ClickFlow` keeps them and asks this to show them.
    """

    def __init__(self, viewer: Any, controls: SegmentControls, layers: LayerChoice, prompts: Prompts) -> None:
        self.viewer = viewer
        self.controls = controls
        self.layers = layers
        self.prompts = prompts
        self.positive = True

    def set_polarity(self, positive: bool) -> None:
        """The sign of the next click (and of the points already selected)."""
        self.positive = bool(positive)
        self.controls.show_polarity(self.positive)
        self.prompts.apply_polarity(self.positive)

    def prompts_layer(self) -> Any:
        """The "M-SAM prompts" Points layer with the image's transform (made when missing)."""
        return self.prompts.ensure(self.layers.image_layer(), self.positive)

    def ready(self) -> None:
        """Give the prompts layer the image's transform and make it active in add mode (ready to click)."""
        try:
            image = self.layers.image_layer()
            layer = self.prompts_layer()
        except MSAMError:
            return
        self.prompts.match_transform(image)
        self.viewer.layers.selection.active = layer
        try:
            layer.mode = "add"
        except Exception:  # a mode napari does not know: the user picks it
            pass

    def show(self, clicks: list[Click]) -> None:
        """Make the prompts layer show exactly ``clicks``."""
        image = self.layers.image_layer()
        self.prompts_layer()
        self.prompts.show_clicks(image, clicks, self.positive)

    def clear(self) -> None:
        """Empty the prompts layer if it is still in the viewer (never makes one)."""
        layer = self.prompts.layer
        if layer is not None and layer in self.viewer.layers:
            self.prompts.set(np.zeros((0, 3)), np.zeros(0, dtype=bool), self.positive)

    def add(self, voxel: tuple[int, int, int], positive: bool = True) -> None:
        """Add a point at ``voxel`` to the prompts layer, as a click of the user would."""
        image = self.layers.image_layer()
        layer = self.prompts_layer()
        data = self.prompts.voxel_to_data(image, voxel)
        if positive != self.positive:
            self.set_polarity(positive)
        layer.add(data)

    def voxel_of(self, i: int) -> tuple[int, int, int] | None:
        """The voxel point ``i`` stands for; in the 3-D view the brightest one along the clicked ray."""
        image = self.layers.image_layer()
        ray = self.prompts.take_ray()
        if self.viewer.dims.ndisplay == 3 and ray is not None:
            vox = brightest_voxel_on_ray(image, self.layers.image_array(image), *ray)
            if vox is not None:
                self.prompts.move_point(i, image, vox)
            return vox
        return self.prompts.point_voxel(image, i)

    def sign_of(self, i: int) -> bool:
        return self.prompts.polarity(i, self.positive)

    def remove(self, indices: list[int]) -> None:
        self.prompts.remove(indices, self.positive)

    def read_all(self) -> tuple[list[Click], list[int]]:
        """The clicks the layer's points stand for, and the indices of points outside the image."""
        layer = self.prompts.layer
        image = self.layers.image_layer()
        clicks: list[Click] = []
        bad: list[int] = []
        for i in range(len(layer.data)):
            vox = self.prompts.point_voxel(image, i)
            if vox is None:
                bad.append(i)
            else:
                clicks.append((vox, bool(layer.features["positive"].iloc[i])))
        return clicks, bad


class ClickFlow:
    """The current object: its clicks, its pending jobs and what it wrote (``writes``).

    Clicks come in through ``points``; it reads the label id, policy and edge mode from ``controls``,
    finds layers through ``layers``, has ``model`` set the worker's session up before each step, runs
    the steps on ``jobs`` and reports to ``status``. It also runs the Auto N-click protocol's job,
    during which clicks by hand are refused.
    """

    def __init__(self, viewer: Any, controls: SegmentControls, jobs: JobRouter, layers: LayerChoice,
                 model: ModelChoice, points: ClickInput, status: StatusSink) -> None:
        self.viewer = viewer
        self.controls = controls
        self.jobs = jobs
        self.layers = layers
        self.model = model
        self.points = points
        self.prompts = points.prompts
        self.status = status
        self.clicks: list[Click] = []
        self.writes = ObjectWrites()                 # what the current object wrote, for undo/reset
        self.last_click_seconds: float | None = None
        self._generation = 0                         # bumped by Reset / Accept / a new image or model
        self._object_jobs: set[int] = set()          # jobs of the current object still to report
        self._refine_jobs: set[int] = set()          # pending edge refinements (a newer click drops them)
        self._step_serial = 0                        # clicks / undos / replays submitted so far
        self._accept_when_done = False
        self._auto_job: int | None = None

    def error(self, text: str) -> None:  # for ``friendly``
        self.status.error(text)

    def forget_clicks(self) -> None:
        """The prompts layer was deleted: its clicks go with it; what the object wrote stays."""
        self.clicks = []

    def ensure_session(self) -> Any:
        image = self.layers.image_layer()
        return self.model.ensure(image, self.layers.image_array(image))

    def start_next_id(self, layer: Any) -> None:
        """The label id moves to the first one free in ``layer``."""
        self.controls.label_spin.setValue(next_free_id(layer.data))
        try:
            layer.selected_label = self.controls.label_id
        except Exception:
            pass

    # ------------------------------------------------------------------ jobs of the object
    def _submit_object_job(self, name: str, fn: Any, *args: Any, on_done: Any) -> int:
        """A job of the current object: its result is dropped if Reset / Accept came in between."""
        generation = self._generation
        job_id = self.jobs.submit(name, fn, *args,
                                  on_done=lambda r: self._on_object_job_done(r, generation, on_done))
        self._object_jobs.add(job_id)
        return job_id

    def _on_object_job_done(self, result: JobResult, generation: int, handler: Any) -> None:
        self._object_jobs.discard(result.job_id)
        self._refine_jobs.discard(result.job_id)
        if generation != self._generation or result.cancelled:
            return
        handler(result)
        if self._accept_when_done and not self._object_jobs:
            self._accept_when_done = False
            self.accept()

    def _new_generation(self) -> None:
        """Start a new object: pending results of the old one are dropped, queued steps skipped."""
        for job_id in self._object_jobs:
            self.jobs.cancel(job_id)
        self._object_jobs.clear()
        self._refine_jobs.clear()
        self._accept_when_done = False
        self._generation += 1

    def supersede_refinement(self) -> int:
        """A new step of the object (click, undo, replay): edge refinements still waiting are dropped and
        none is queued for an older click; returns the new step's serial number."""
        for job_id in self._refine_jobs:
            self.jobs.cancel(job_id)
        self._step_serial += 1
        return self._step_serial

    # ------------------------------------------------------------------ clicks in
    @friendly
    def on_points_changed(self, event: Any) -> None:
        if self.prompts.updating or self.jobs.closed:
            return
        action = str(getattr(event, "action", "changed"))
        layer = self.prompts.layer
        if layer is None or action.endswith(("adding", "removing", "changing")):
            return
        if self.busy_auto:
            self.points.show(self.clicks)
            self.error("wait for the automatic N-click run to finish (or cancel it) before clicking")
            return
        if action.endswith("added"):
            n = len(layer.data)
            idx = sorted({int(i) % n for i in (event.data_indices or ())}) or [n - 1]
            if idx != list(range(len(self.clicks), n)):
                self._replay_from_layer()
                return
            for i in idx:
                self._handle_new_point(i)
        else:  # removed or moved by hand: rebuild the object from what the layer now shows
            self._replay_from_layer()

    def _handle_new_point(self, i: int) -> None:
        try:
            vox = self.points.voxel_of(i)
            if vox is None:
                self.points.remove([i])
                self.error("that click is outside the image; click inside the volume")
                return
            self.layers.output_layer()
            self.ensure_session()
        except MSAMError as exc:
            self.points.remove([i])
            self.error(str(exc))
            return
        positive = self.points.sign_of(i)
        self.clicks.append((vox, positive))
        self._start_tracking()
        serial = self.supersede_refinement()
        n = len(self.clicks)
        two_phase = self.controls.edge_refine != "off"
        self._submit_object_job("click", job_click, vox, positive, two_phase,
                                on_done=lambda r, n=n, s=serial: self._on_click_done(r, n, s))
        more = len(self._object_jobs) - 1
        self.status.show_message(f"click {n}: computing…" + (f" · {more} more queued" if more > 0 else ""))

    def _replay_from_layer(self) -> None:
        try:
            clicks, bad = self.points.read_all()
            if bad:
                self.points.remove(bad)
                self.error("points outside the image were removed")
            self.layers.output_layer()
            self.ensure_session()
        except MSAMError as exc:
            self.error(str(exc))
            return
        self.clicks = clicks
        self._start_tracking()
        if not clicks:
            self._new_generation()
            self.jobs.submit("reset", job_reset)
            self._restore_object()
            self.status.show_message("object cleared (no prompts left)")
            return
        self.supersede_refinement()
        self._submit_object_job("replay clicks", job_replay, list(clicks), on_done=self._on_replay_done)

    # ------------------------------------------------------------------ labels out
    def _start_tracking(self) -> None:
        self.writes.start(self.layers.output_layer())

    def _layer_valid(self) -> bool:
        return self.writes.valid(self.viewer.layers)

    def apply_update(self, update: ObjectUpdate) -> None:
        """Write the object's new state into the output layer inside its box, respecting the policy."""
        if not self._layer_valid():
            self.error("the output Labels layer changed or was removed; the result was not written")
            return
        if update.replace_all:
            self.writes.restore(refresh=False)
        if update.bbox is not None and update.mask is not None:
            self.writes.write(update.bbox, update.mask, self.controls.label_id, self.controls.policy)
        self.writes.layer.refresh()

    def relabel(self, label_id: int) -> None:
        """The object being drawn takes ``label_id`` at once (not only where the next click writes)."""
        if self.writes.active and self._layer_valid():
            self.writes.relabel(label_id)
            self.writes.layer.refresh()

    def _restore_object(self, refresh: bool = True) -> None:
        """Put back what was under the current object (undo all its writes)."""
        if self._layer_valid():
            self.writes.restore(refresh)

    def _click_status(self, n: int, result: JobResult, what: str = "") -> None:
        upd: ObjectUpdate = result.value
        more = len(self._object_jobs)
        q = f" · {more} more step(s) queued" if more and not upd.refine_pending else ""
        z = f" · zoomed out {upd.zoom:g}x (large object)" if upd.zoom > 1.0 else ""
        acc = " · accepting when done" if self._accept_when_done else ""
        self.status.show_message(f"click {n}: {timing_text(upd.timings, result.seconds)} · "
                                 f"{self.writes.voxels} voxels{z} · {self.model.device_shown}{what}{q}{acc}")

    def _on_click_done(self, result: JobResult, n: int, serial: int = -1) -> None:
        if result.error:
            self.error(f"click {n} failed: {result.error}")
            return
        upd: ObjectUpdate = result.value
        self.apply_update(upd)
        self.last_click_seconds = result.seconds
        upd.refine_pending = upd.refine_pending and serial == self._step_serial  # else a newer step came
        if upd.refine_pending:
            job_id = self._submit_object_job("refine edges", job_refine,
                                             on_done=lambda r, n=n: self._on_refine_done(r, n))
            self._refine_jobs.add(job_id)
        self._click_status(n, result, " · refining edges…" if upd.refine_pending else "")

    def _on_refine_done(self, result: JobResult, n: int) -> None:
        if result.error:
            self.error(f"edge refinement of click {n} failed: {result.error}")
            return
        if result.value is not None:
            self.apply_update(result.value)
            self._click_status(n, result, " · edges refined")

    def _on_replay_done(self, result: JobResult) -> None:
        if result.error:
            self.error(f"re-running the clicks failed: {result.error}")
            return
        self.apply_update(result.value)
        self.status.show_message(f"object rebuilt from {len(self.clicks)} click(s) in {result.seconds:.2f} s")

    def _on_undo_done(self, result: JobResult) -> None:
        if result.error:
            self.error(f"undo failed: {result.error}")
            return
        self.apply_update(result.value)
        self.status.show_message(f"undone; {len(self.clicks)} click(s) left")

    # ------------------------------------------------------------------ steps of the object
    def drop_tracking(self, clear_points: bool) -> None:
        """The image/model changed: the object stays in the layer as it is, its clicks are forgotten."""
        self._new_generation()
        self.writes.commit()
        self.clicks = []
        if clear_points:
            self.points.clear()
        if self.model.submitted is not None and not self.jobs.closed:
            self.jobs.submit("reset", job_reset)

    def undo(self) -> None:
        if self.busy_auto:
            self.error("the automatic run is still going; cancel it first")
            return
        if not self.clicks:
            self.status.show_message("nothing to undo")
            return
        self.clicks.pop()
        self.points.show(self.clicks)
        self.supersede_refinement()
        self._submit_object_job("undo", job_undo, on_done=self._on_undo_done)

    def reset(self) -> None:
        if self._auto_job is not None:
            self.jobs.cancel(self._auto_job)
        self._new_generation()
        self.clicks = []
        if self.prompts.layer is not None:
            self.points.show(self.clicks)
        self._restore_object()
        self.jobs.submit("reset", job_reset)
        self.status.show_message("object reset")

    def accept(self) -> None:
        if self.busy_auto:
            self.error("the automatic run is still going; wait or cancel it first")
            return
        label_id = self.controls.label_id
        if self._object_jobs:  # the object is still being computed: accept it as soon as it is done
            self._accept_when_done = True
            self.status.show_message(f"object {label_id} will be accepted when its "
                                     f"{len(self._object_jobs)} pending step(s) are done")
            return
        if not self.writes.active or not self._layer_valid() or not (self.writes.layer.data == label_id).any():
            self.status.show_message("nothing to accept yet: click on the object first")
            return
        layer = self.writes.layer
        self._new_generation()
        self.writes.commit()
        self.clicks = []
        self.points.show(self.clicks)
        self.jobs.submit("accept", job_accept)
        self.start_next_id(layer)
        self.status.show_message(f"object {label_id} accepted; next label id {self.controls.label_id}")

    # ------------------------------------------------------------------ the Auto N-click run
    @property
    def busy_auto(self) -> bool:
        return self._auto_job is not None

    def start_fresh_object(self) -> None:
        """Put back what the current object changed and get everything ready for a new one."""
        self.layers.output_layer()
        self.points.prompts_layer()
        self._new_generation()
        self.clicks = []
        self.points.show(self.clicks)
        self._restore_object()
        self._start_tracking()
        self.ensure_session()

    def run_auto(self, fn: Any, *args: Any, on_row: Any, on_done: Any) -> None:
        def done(result: JobResult) -> None:
            self._auto_job = None
            on_done(result)

        self._auto_job = self.jobs.submit("auto N-click", fn, *args, on_done=done, on_progress=on_row)

    def cancel_auto(self) -> bool:
        if self._auto_job is None:
            return False
        self.jobs.cancel(self._auto_job)
        return True

    def show_auto_click(self, voxel: tuple[int, int, int], positive: bool, bbox: Any, mask: Any) -> None:
        self.clicks.append((voxel, positive))
        self.points.show(self.clicks)
        if bbox is not None and mask is not None:
            self.apply_update(ObjectUpdate(bbox, mask, {}))
