"""Points -> clicks -> worker jobs -> labels: the click loop of the Segment widget.

Every job of the current object carries the object's generation; Reset and Accept start a new one, so a
result that arrives after them is dropped instead of drawing a ghost into the next object. With edge
refinement on, the network's mask is written first and the refined one when it is ready; a newer click
cancels a refinement still waiting.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..errors import MSAMError
from ._utils import friendly
from .jobs import ObjectUpdate, SessionSpec, job_click, job_ensure, job_refine, job_replay, job_reset
from .labels_policy import timing_text
from .prompts import layer_token
from .ray_pick import brightest_voxel_on_ray
from .workers import JobResult

log = logging.getLogger(__name__)


class ClickFlow:
    """Mixin of :class:`~napari_msam.widgets.segment.SegmentWidget`: clicks in, labels out."""

    def submit(self, name: str, fn: Any, *args: Any, on_done: Any = None, on_progress: Any = None) -> int:
        job_id = self.worker.submit(name, fn, *args)
        if on_done is not None:
            self._handlers[job_id] = on_done
        if on_progress is not None:
            self._progress_handlers[job_id] = on_progress
        return job_id

    def _submit_object_job(self, name: str, fn: Any, *args: Any, on_done: Any) -> int:
        """A job of the current object: its result is dropped if Reset / Accept came in between."""
        generation = self._generation
        job_id = self.submit(name, fn, *args,
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
            self.accept_object()

    def _new_generation(self) -> None:
        """Start a new object: pending results of the old one are dropped, queued steps skipped."""
        for job_id in self._object_jobs:
            self.worker.cancel(job_id)
        self._object_jobs.clear()
        self._refine_jobs.clear()
        self._accept_when_done = False
        self._generation += 1

    def _on_job_finished(self, result: JobResult) -> None:
        handler = self._handlers.pop(result.job_id, None)
        self._progress_handlers.pop(result.job_id, None)
        if self._closed:
            return
        if result.error and result.name in ("set up image", "load model"):
            self._submitted_spec = None
        try:
            if handler is not None:
                handler(result)
            elif result.error:
                self.error(f"{result.name}: {result.error}")
        except Exception as exc:  # a GUI-side bug must not surface as a traceback dialog
            log.warning("handler for %s failed", result.name, exc_info=True)
            self.error(f"{result.name}: {exc}")
        self._on_queue_changed(self.worker.pending)

    def _on_job_progress(self, item: tuple) -> None:
        job_id, _name, payload = item
        handler = self._progress_handlers.get(job_id)
        if handler is not None and not self._closed:
            try:
                handler(payload)
            except Exception as exc:
                log.warning("progress handler failed", exc_info=True)
                self.error(str(exc))

    def _on_queue_changed(self, n: int) -> None:
        if self._closed:
            return
        self.busy.setRange(0, 0 if n else 1)
        self.busy.setValue(0 if n else 1)
        self.busy.setToolTip(f"{n} step(s) queued or running" if n else "idle")

    @property
    def closed(self) -> bool:
        """True once the widget's worker has stopped (after ``close_worker``)."""
        return self._closed

    def rebuild_session(self, spec: SessionSpec, source: tuple, on_done: Any) -> None:
        """A new model or new settings: the current object stays as drawn, its clicks are forgotten, and
        the worker loads the model / builds the session for ``spec`` (the image follows on the next click)."""
        self._drop_object_tracking(clear_points=True)
        self._submitted_spec = None
        self.submit("load model", job_ensure, spec, source, None, (1.0, 1.0, 1.0), "other",
                    self._session_factory, on_done=on_done)

    def ensure_session(self) -> SessionSpec:
        """Queue whatever the worker needs (model, session, image) before a click; returns the spec."""
        source = self.model.source()
        if source is None:
            raise MSAMError("no model: choose a checkpoint file or the embedded default")
        image = self.image_layer()
        data = self._image_array(image)
        modality = self.modality_combo.currentText().lower()
        spacing = tuple(float(s) for s in image.scale)
        spec = SessionSpec(source, self.device, (layer_token(image), id(data), data.shape, modality, spacing),
                           self.tta, self.edge_refine)
        if spec != self._submitted_spec:
            self._submitted_spec = spec
            self.submit("set up image", job_ensure, spec, source, data, spacing, modality,
                        self._session_factory, on_done=self.model.on_setup_done)
        return spec

    @friendly
    def _on_points_changed(self, event: Any) -> None:
        if self.prompts.updating or self._closed:
            return
        action = str(getattr(event, "action", "changed"))
        layer = self.prompts.layer
        if layer is None or action.endswith(("adding", "removing", "changing")):
            return
        if self.busy_auto:
            self._sync_points_from_clicks()
            self.error("wait for the automatic N-click run to finish (or cancel it) before clicking")
            return
        if action.endswith("added"):
            n = len(layer.data)
            idx = sorted({int(i) % n for i in (event.data_indices or ())}) or [n - 1]
            if idx != list(range(len(self._object_clicks), n)):
                self._replay_from_layer()
                return
            for i in idx:
                self._handle_new_point(i)
        else:  # removed or moved by hand: rebuild the object from what the layer now shows
            self._replay_from_layer()

    def _click_voxel(self, i: int) -> tuple[int, int, int] | None:
        """The voxel point ``i`` stands for; in the 3-D view the brightest one along the clicked ray."""
        image = self.image_layer()
        ray = self.prompts.take_ray()
        if self.viewer.dims.ndisplay == 3 and ray is not None:
            vox = brightest_voxel_on_ray(image, self._image_array(image), *ray)
            if vox is not None:
                self.prompts.move_point(i, image, vox)
            return vox
        return self.prompts.point_voxel(image, i)

    def _handle_new_point(self, i: int) -> None:
        try:
            vox = self._click_voxel(i)
            if vox is None:
                self.prompts.remove([i], self._positive)
                self.error("that click is outside the image; click inside the volume")
                return
            self.output_layer()
            self.ensure_session()
        except MSAMError as exc:
            self.prompts.remove([i], self._positive)
            self.error(str(exc))
            return
        positive = self.prompts.polarity(i, self._positive)
        self._object_clicks.append((vox, positive))
        self._start_tracking()
        serial = self.supersede_refinement()
        n = len(self._object_clicks)
        two_phase = self.edge_refine != "off"
        self._submit_object_job("click", job_click, vox, positive, two_phase,
                                on_done=lambda r, n=n, s=serial: self._on_click_done(r, n, s))
        more = len(self._object_jobs) - 1
        self.show_message(f"click {n}: computing…" + (f" · {more} more queued" if more > 0 else ""))

    def add_click(self, voxel: tuple[int, int, int], positive: bool = True) -> None:
        """Programmatic click (scripts, tests): adds the point to the prompts layer like a user would."""
        image = self.image_layer()
        layer = self.prompts_layer()
        data = self.prompts.voxel_to_data(image, voxel)
        if positive != self._positive:
            self.set_polarity(positive)
        layer.add(data)

    def _sync_points_from_clicks(self) -> None:
        """Make the prompts layer show exactly the current object's clicks."""
        image = self.image_layer()
        self.prompts_layer()
        self.prompts.show_clicks(image, self._object_clicks, self._positive)

    def _replay_from_layer(self) -> None:
        layer = self.prompts.layer
        clicks: list[tuple[tuple[int, int, int], bool]] = []
        bad: list[int] = []
        try:
            image = self.image_layer()
            for i in range(len(layer.data)):
                vox = self.prompts.point_voxel(image, i)
                if vox is None:
                    bad.append(i)
                else:
                    clicks.append((vox, bool(layer.features["positive"].iloc[i])))
            if bad:
                self.prompts.remove(bad, self._positive)
                self.error("points outside the image were removed")
            self.output_layer()
            self.ensure_session()
        except MSAMError as exc:
            self.error(str(exc))
            return
        self._object_clicks = clicks
        self._start_tracking()
        if not clicks:
            self._new_generation()
            self.submit("reset", job_reset)
            self._restore_object()
            self.show_message("object cleared (no prompts left)")
            return
        self.supersede_refinement()
        self._submit_object_job("replay clicks", job_replay, list(clicks), on_done=self._on_replay_done)

    def _start_tracking(self) -> None:
        self.writes.start(self.output_layer())

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
            self.writes.write(update.bbox, update.mask, int(self.label_spin.value()),
                              self.policy_combo.currentText())
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
        self.show_message(f"click {n}: {timing_text(upd.timings, result.seconds)} · {self.writes.voxels} voxels"
                          f"{z} · {self.model.device_shown}{what}{q}{acc}")

    def supersede_refinement(self) -> int:
        """A new step of the object (click, undo, replay): edge refinements still waiting are dropped and
        none is queued for an older click; returns the new step's serial number."""
        for job_id in self._refine_jobs:
            self.worker.cancel(job_id)
        self._step_serial += 1
        return self._step_serial

    def _on_click_done(self, result: JobResult, n: int, serial: int = -1) -> None:
        if result.error:
            self.error(f"click {n} failed: {result.error}")
            return
        upd: ObjectUpdate = result.value
        self.apply_update(upd)
        self._last_click_seconds = result.seconds
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
        self.show_message(f"object rebuilt from {len(self._object_clicks)} click(s) in {result.seconds:.2f} s")

    def _drop_object_tracking(self, clear_points: bool) -> None:
        """The image/model changed: the object stays in the layer as it is, its clicks are forgotten."""
        self._new_generation()
        self.writes.commit()
        self._object_clicks = []
        layer = self.prompts.layer
        if clear_points and layer is not None and layer in self.viewer.layers:
            self.prompts.set(np.zeros((0, 3)), np.zeros(0, dtype=bool), self._positive)
        if self._submitted_spec is not None and not self._closed:
            self.submit("reset", job_reset)

    def _on_undo_done(self, result: JobResult) -> None:
        if result.error:
            self.error(f"undo failed: {result.error}")
            return
        self.apply_update(result.value)
        self.show_message(f"undone; {len(self._object_clicks)} click(s) left")
