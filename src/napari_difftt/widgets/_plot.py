"""A small live plot of the training loss and validation Dice, painted with QPainter.

No plotting library: two polylines over a step axis, loss on the left scale (0 … its maximum),
Dice on the right (0 … 1), in the colours of the viewer's napari theme (followed live).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import QSizePolicy, QWidget

if TYPE_CHECKING:
    import napari

__all__ = ["LossPlot"]

MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 44, 40, 18, 22


class LossPlot(QWidget):
    """Loss per step (line) and validation Dice (line with dots) against the step number."""

    def __init__(self, viewer: napari.Viewer | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.losses: list[tuple[int, float]] = []
        self.dice: list[tuple[int, float]] = []
        self.total = 1
        self.dice_label = "validation Dice"
        self._colours: dict[str, QColor] = {}
        self._viewer = viewer
        self.setMinimumHeight(130)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._apply_theme()
        if viewer is not None:
            viewer.events.theme.connect(self._apply_theme)
            events = viewer.events.theme
            self.destroyed.connect(lambda *_: events.disconnect(self._apply_theme))

    def sizeHint(self) -> QSize:
        return QSize(320, 170)

    # ---------------------------------------------------------------- data
    def reset(self, total: int) -> None:
        """Forget all points; the step axis runs 0 … ``total``."""
        self.losses.clear()
        self.dice.clear()
        self.total = max(int(total), 1)
        self.update()

    def add(self, step: int, loss: float, dice: float | None = None) -> None:
        """Append one step's loss (non-finite values are skipped) and, if given, its Dice."""
        if math.isfinite(loss):
            self.losses.append((int(step), float(loss)))
        if dice is not None and math.isfinite(dice):
            self.dice.append((int(step), float(dice)))
        self.update()

    def set_dice_label(self, label: str) -> None:
        """Name the Dice line (e.g. "Dice on the training image" when nothing is held out)."""
        if label != self.dice_label:
            self.dice_label = label
            self.update()

    # ---------------------------------------------------------------- painting
    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        colours = self._colours
        painter.fillRect(self.rect(), colours["background"])
        plot = QRectF(MARGIN_LEFT, MARGIN_TOP, max(self.width() - MARGIN_LEFT - MARGIN_RIGHT, 1),
                      max(self.height() - MARGIN_TOP - MARGIN_BOTTOM, 1))
        font = QFont(painter.font())
        font.setPointSizeF(max(font.pointSizeF() - 1, 6))
        painter.setFont(font)
        top_loss = max((loss for _, loss in self.losses), default=1.0) or 1.0
        self._axes(painter, plot, top_loss)
        self._line(painter, plot, self.losses, top_loss, colours["loss"], dots=False)
        self._line(painter, plot, self.dice, 1.0, colours["dice"], dots=True)
        painter.end()

    def _axes(self, painter: QPainter, plot: QRectF, top_loss: float) -> None:
        colours = self._colours
        painter.setPen(QPen(colours["grid"], 1))
        for fraction in (0.0, 0.5, 1.0):
            y = plot.bottom() - fraction * plot.height()
            painter.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
        painter.setPen(colours["text"])
        flags = Qt.AlignmentFlag
        for fraction in (0.0, 0.5, 1.0):
            y = plot.bottom() - fraction * plot.height()
            left = QRectF(0, y - 8, MARGIN_LEFT - 4, 16)
            right = QRectF(plot.right() + 4, y - 8, MARGIN_RIGHT - 4, 16)
            value = f"{fraction * top_loss:.2g}"
            painter.drawText(left, flags.AlignRight | flags.AlignVCenter, value)
            painter.drawText(right, flags.AlignLeft | flags.AlignVCenter, f"{fraction:.1f}")
        bottom = QRectF(plot.left(), plot.bottom() + 2, plot.width(), MARGIN_BOTTOM - 2)
        painter.drawText(bottom, flags.AlignLeft | flags.AlignTop, "0")
        painter.drawText(bottom, flags.AlignHCenter | flags.AlignTop, "step")
        painter.drawText(bottom, flags.AlignRight | flags.AlignTop, str(self.total))
        legend = QRectF(plot.left(), 0, plot.width(), MARGIN_TOP)
        painter.setPen(colours["loss"])
        painter.drawText(legend, flags.AlignLeft | flags.AlignVCenter, "loss")
        painter.setPen(colours["dice"])
        painter.drawText(legend, flags.AlignRight | flags.AlignVCenter, self.dice_label)

    def _line(self, painter, plot: QRectF, points, top: float, colour: QColor, *, dots: bool):
        if not points:
            return

        def place(step: int, value: float) -> QPointF:
            x = plot.left() + plot.width() * min(step / self.total, 1.0)
            y = plot.bottom() - plot.height() * min(max(value / top, 0.0), 1.0)
            return QPointF(x, y)

        placed = [place(step, value) for step, value in points]
        painter.setPen(QPen(colour, 1.5))
        painter.drawPolyline(QPolygonF(placed))
        if dots or len(placed) == 1:
            painter.setBrush(colour)
            for point in placed:
                painter.drawEllipse(point, 2.5, 2.5)

    def _apply_theme(self, *_: object) -> None:
        from napari.utils.theme import get_theme

        name = self._viewer.theme if self._viewer is not None else "dark"
        theme = get_theme(name)

        def colour(key: str) -> QColor:
            return QColor(getattr(theme, key).as_hex())

        self._colours = {
            "background": colour("foreground"),
            "grid": colour("primary"),
            "text": colour("text"),
            "loss": colour("current"),
            "dice": colour("warning"),
        }
        self.update()
