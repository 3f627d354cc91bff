"""Small matplotlib line plots embedded in Qt widgets (Dice per click, training loss / Dice).

One class, :class:`MetricPlot`, is shared by the Segment widget (Dice per click) and the training widget
(loss and Dice per epoch), so both look the same and follow napari's dark theme.
"""

from __future__ import annotations

from collections.abc import Sequence

from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

_BG = "#262930"  # napari dark theme background
_FG = "#d6d0ce"
_COLORS = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8")


class MetricPlot(QWidget):
    """A compact plot of one or more named series that can grow point by point.

    ``series`` names the lines (legend entries); ``ylim`` fixes the y range (e.g. ``(0, 1)`` for Dice),
    ``None`` lets it follow the data. Points are added with :meth:`add_point` or replaced wholesale
    with :meth:`set_series`; :meth:`clear` empties every line.
    """

    def __init__(
        self,
        title: str = "",
        xlabel: str = "click",
        ylabel: str = "Dice",
        series: Sequence[str] = ("Dice",),
        ylim: tuple[float, float] | None = (0.0, 1.0),
        parent: QWidget | None = None,
        height_px: int = 170,
    ) -> None:
        super().__init__(parent)
        self._ylim = ylim
        self.figure = Figure(figsize=(3.2, 1.8), dpi=90, facecolor=_BG, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(height_px)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.axes = self.figure.add_subplot(1, 1, 1)
        self._data: dict[str, tuple[list[float], list[float]]] = {}
        self._lines = {}
        for i, name in enumerate(series):
            (line,) = self.axes.plot([], [], marker="o", markersize=3, lw=1.5, color=_COLORS[i % len(_COLORS)],
                                     label=name)
            self._lines[name] = line
            self._data[name] = ([], [])
        self._style(title, xlabel, ylabel, show_legend=len(series) > 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    def _style(self, title: str, xlabel: str, ylabel: str, show_legend: bool) -> None:
        ax = self.axes
        ax.set_facecolor(_BG)
        for spine in ax.spines.values():
            spine.set_color(_FG)
        ax.tick_params(colors=_FG, labelsize=7)
        ax.set_xlabel(xlabel, color=_FG, fontsize=8)
        ax.set_ylabel(ylabel, color=_FG, fontsize=8)
        if title:
            ax.set_title(title, color=_FG, fontsize=8)
        ax.grid(True, color="#44474f", lw=0.5)
        if self._ylim is not None:
            ax.set_ylim(*self._ylim)
        if show_legend:
            leg = ax.legend(fontsize=7, facecolor=_BG, edgecolor=_FG)
            for text in leg.get_texts():
                text.set_color(_FG)

    @property
    def series_names(self) -> list[str]:
        return list(self._lines)

    def data(self, name: str) -> tuple[list[float], list[float]]:
        """The (x, y) values currently drawn for ``name`` (copies)."""
        xs, ys = self._data[name]
        return list(xs), list(ys)

    def add_point(self, name: str, x: float, y: float) -> None:
        """Append one point to series ``name`` and redraw (cheap: the plots hold tens of points)."""
        xs, ys = self._data[name]
        xs.append(float(x))
        ys.append(float(y))
        self._redraw()

    def set_series(self, name: str, xs: Sequence[float], ys: Sequence[float]) -> None:
        """Replace the whole series ``name``."""
        self._data[name] = ([float(v) for v in xs], [float(v) for v in ys])
        self._redraw()

    def clear(self) -> None:
        for name in self._data:
            self._data[name] = ([], [])
        self._redraw()

    def _redraw(self) -> None:
        all_x: list[float] = []
        all_y: list[float] = []
        for name, line in self._lines.items():
            xs, ys = self._data[name]
            line.set_data(xs, ys)
            all_x += xs
            all_y += ys
        if all_x:
            lo, hi = min(all_x), max(all_x)
            self.axes.set_xlim(lo - 0.5, hi + 0.5 if hi > lo else lo + 1.5)
            if all(float(x).is_integer() for x in all_x):  # clicks / epochs / steps: integer ticks only
                from matplotlib.ticker import MaxNLocator

                self.axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            if self._ylim is None:
                ylo, yhi = min(all_y), max(all_y)
                pad = 0.05 * (yhi - ylo) if yhi > ylo else 0.5
                self.axes.set_ylim(ylo - pad, yhi + pad)
        self.canvas.draw_idle()
