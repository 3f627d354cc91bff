"""Small Qt helpers shared by the napari-msam widgets."""

from __future__ import annotations

import functools
import logging
from typing import Any

from qtpy.QtWidgets import QComboBox

from ..errors import MSAMError

log = logging.getLogger(__name__)


def friendly(method: Any) -> Any:
    """Decorate GUI entry points (buttons, keys, layer events): errors become a message, not a traceback."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except MSAMError as exc:
            target = getattr(self, "seg", self)
            target.error(str(exc))
        except Exception as exc:
            log.warning("napari-msam: %s failed", method.__name__, exc_info=True)
            target = getattr(self, "seg", self)
            target.error(f"unexpected {type(exc).__name__}: {exc}")
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
