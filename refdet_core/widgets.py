"""ipywidgets panels: optional views over plain values. Headless runs never depend on them."""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as W
from IPython.display import display

from refdet_core import viz


def frame_browser(layout: Any, store: Any) -> W.Widget:
    """Pick a video and a stored frame; shows the letterboxed frame with its ground-truth boxes."""
    videos = [v for v in layout.videos if v in store.video_ids]
    video = W.Dropdown(options=videos, description="video")
    frame = W.SelectionSlider(options=store.frames(videos[0]), description="frame", continuous_update=False)
    out = W.Output()

    def redraw(*_: Any) -> None:
        img, lb = store.get(video.value, frame.value)
        boxes = layout.videos[video.value].boxes_by_frame.get(frame.value)
        with out:
            out.clear_output(wait=True)
            display(
                viz.image_grid(
                    [img],
                    [f"{video.value} #{frame.value}"],
                    ncols=1,
                    size=6,
                    boxes=[lb.to_letterbox(boxes) if boxes is not None else None],
                )
            )

    def on_video(_: Any) -> None:
        frame.options = store.frames(video.value)
        redraw()

    video.observe(on_video, names="value")
    frame.observe(redraw, names="value")
    redraw()
    return W.VBox([W.HBox([video, frame]), out])


AUTO = W.Layout(width="auto")  # a widget as wide as its label: nothing cut


class OptionPanel(W.VBox):
    """Checkboxes over the optimization registry, one row per entry with its meaning, and a run button.

    A click calls ``on_run(ticked_names) -> (shown, message)``: ``shown`` (a figure) goes under the button and
    ``message`` to the status line. While it runs the button is disabled and the status line says so.
    """

    def __init__(self, options: Sequence[Any], selected: Sequence[str], on_run: Callable[[list[str]], Any]) -> None:
        self.on_run = on_run
        self.boxes = {
            o.name: W.Checkbox(value=o.name in selected, description=o.name, indent=False, layout=AUTO) for o in options
        }
        rows: list[W.Widget] = []
        for o in options:
            tag = W.HTML(f"<code>{o.exactness}</code> &middot; {o.applies}", layout=AUTO)
            rows += [self.boxes[o.name], tag, W.HTML(html.escape(o.description))]
        columns = W.Layout(grid_template_columns="max-content max-content 1fr", grid_gap="2px 12px")
        grid = W.GridBox(rows, layout=columns)
        self.button = W.Button(
            description="Bench the ticked options against seed",
            button_style="primary",
            icon="play",
            layout=W.Layout(width="auto", flex="0 0 auto"),  # a long status line must not squeeze the label
        )
        self.status = W.HTML("Tick options, then run the bench.")
        self.out = W.Output()
        self.button.on_click(self._clicked)
        super().__init__([grid, W.HBox([self.button, self.status]), self.out])

    @property
    def ticked(self) -> list[str]:
        return [name for name, box in self.boxes.items() if box.value]

    def _clicked(self, _: Any = None) -> None:
        names = self.ticked
        if not names:
            self.status.value = "Nothing ticked: tick at least one option."
            return
        self.button.disabled = True
        self.status.value = f"<b>Running</b> seed vs {len(names)} ticked options ({', '.join(names)}) &hellip;"
        start = time.perf_counter()
        try:
            with self.out:
                self.out.clear_output(wait=True)
                shown, message = self.on_run(names)
                if shown is not None:
                    display(shown)
            self.status.value = f"Done in {time.perf_counter() - start:.0f} s: {html.escape(message)}"
        except Exception as err:
            self.status.value = f"<b>Failed</b>: {html.escape(type(err).__name__)}: {html.escape(str(err))}"
            raise
        finally:
            self.button.disabled = False


def option_panel(options: Sequence[Any], selected: Sequence[str], on_run: Callable[[list[str]], Any]) -> OptionPanel:
    """See ``OptionPanel``; ``options`` are registry entries (``name``, ``exactness``, ``applies``, ``description``)."""
    return OptionPanel(options, selected, on_run)


class TrainingMonitor(W.VBox):
    """A bar over the run's optimizer steps with a status line, and the live loss plot right under it.

    ``update(step, row, history)`` moves the bar (``row``: the last history row, ``history``: a callable
    returning the history, called only when the plot is due); the plot is redrawn every ``plot_every`` steps,
    on ``plot(history)`` and at the end.
    """

    def __init__(self, total_steps: int, *, plot_every: int = 0) -> None:
        self.total = max(1, total_steps)
        self.plot_every = plot_every or max(1, self.total // 20)
        self.bar = W.IntProgress(value=0, min=0, max=self.total, description="steps", layout=W.Layout(width="50%"))
        self.status = W.HTML(f"0 / {self.total} steps")
        self.out = W.Output()
        self._start, self._plotted = time.perf_counter(), 0
        super().__init__([W.HBox([self.bar, self.status]), self.out])

    def update(self, step: int, row: dict[str, Any] | None, history: Callable[[], Any] | None = None) -> None:
        self.bar.max = max(self.total, step)
        self.bar.value = step
        elapsed = time.perf_counter() - self._start
        rate = step / max(elapsed, 1e-9)
        eta = (self.bar.max - step) / rate if rate > 0 else float("nan")
        loss = f" &middot; loss {row['loss']:.3f}" if row and "loss" in row else ""
        epoch = f" &middot; epoch {int(row['epoch']) + 1}" if row and "epoch" in row else ""
        speed = f" &middot; {rate:.2f} steps/s &middot; ETA {eta:.0f} s"
        self.status.value = f"{step} / {self.bar.max} steps{epoch}{loss}{speed}"
        if history is not None and step - self._plotted >= self.plot_every:
            self.plot(history())

    def plot(self, history: Any) -> None:
        if history is None or len(history) == 0:
            return
        self._plotted = int(history["step"].iloc[-1])
        with self.out:
            self.out.clear_output(wait=True)
            display(viz.training_curves(history))

    def finish(self, step: int, how: str) -> None:
        self.bar.value = min(step, self.bar.max)
        self.bar.bar_style = "success" if how == "done" else "danger"
        self.status.value = f"{how}: {step} steps in {time.perf_counter() - self._start:.0f} s"


def training_monitor(total_steps: int) -> TrainingMonitor:
    """See ``TrainingMonitor``: display it in the cell that trains."""
    return TrainingMonitor(total_steps)
