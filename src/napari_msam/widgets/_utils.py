"""Small Qt helpers shared by the napari-msam widgets."""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import QComboBox, QScrollArea, QVBoxLayout, QWidget

from ..errors import MSAMError

log = logging.getLogger(__name__)


def _positional_limit(method: Any) -> int | None:
    """How many positional arguments ``method`` takes after ``self`` (None: any number)."""
    params = list(inspect.signature(method).parameters.values())[1:]
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


def friendly(method: Any) -> Any:
    """Decorate GUI entry points (buttons, keys, layer events): errors become a message, not a traceback.

    The decorated object reports through its own ``error(text)``.
    Qt's ``clicked(bool)`` hands a ``checked`` flag to whatever slot it is connected to; arguments beyond
    what the method takes are dropped, so a button can be connected to the method itself.
    """
    limit = _positional_limit(method)

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if limit is not None:
            args = args[:limit]
        try:
            return method(self, *args, **kwargs)
        except MSAMError as exc:
            self.error(str(exc))
        except Exception as exc:
            log.warning("napari-msam: %s failed", method.__name__, exc_info=True)
            self.error(f"unexpected {type(exc).__name__}: {exc}")
        return None

    return wrapper


def close_quietly(worker: Any, *_: Any) -> None:
    try:
        worker.close(timeout=5.0)
    except Exception:  # shutting down: nothing useful to report
        pass


def fill_combo(combo: QComboBox, items: list[str], keep: bool = True, prefer: str | None = None) -> None:
    current = combo.currentText()
    existing = [combo.itemText(i) for i in range(combo.count())]
    if existing == items:
        return
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    target = current if keep and current in items else (prefer if prefer in items else None)
    if target is not None:
        combo.setCurrentText(target)
    combo.blockSignals(False)
    if combo.currentText() != current:
        combo.currentIndexChanged.emit(combo.currentIndex())


def esc_html(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class VerticalScrollArea(QScrollArea):
    """Scrolls its content up and down only: the dock keeps the width the controls need, and its height
    can shrink to fit a 1080-pixel screen beside other docks."""

    def __init__(self, body: QWidget) -> None:
        super().__init__()
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setWidget(body)
        body.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 (Qt name)
        if obj is self.widget() and event.type() == QEvent.Type.LayoutRequest:
            self.updateGeometry()  # the content's width changed: ask the dock again
        return super().eventFilter(obj, event)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        width = (self.widget().minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                 + 2 * self.frameWidth())
        return QSize(width, 120)

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt name)
        return QSize(self.minimumSizeHint().width(), min(self.widget().sizeHint().height() + 4, 800))


def scrolled_body(widget: QWidget) -> tuple[QVBoxLayout, QVBoxLayout]:
    """Lay ``widget`` out as a vertically scrolled body above a fixed bottom part.

    Returns ``(outer, body)``: add the controls that may scroll to ``body`` and what must stay visible
    (status line, Start / Cancel) to ``outer``, after the scroll area.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    content = QWidget()
    body = QVBoxLayout(content)
    body.setContentsMargins(6, 6, 6, 6)
    outer.addWidget(VerticalScrollArea(content), 1)
    return outer, body
