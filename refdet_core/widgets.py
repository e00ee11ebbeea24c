"""ipywidgets panels: optional views over plain values. Headless runs never depend on them."""

from __future__ import annotations

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


def option_panel(options: Sequence[Any], selected: Sequence[str], on_run: Callable[[list[str]], Any]) -> W.Widget:
    """Checkboxes over the optimization registry and a run button calling ``on_run(ticked_names)``.

    ``options`` are registry entries with ``name``, ``exact`` and ``applies`` and ``description``.
    """
    boxes = {
        o.name: W.Checkbox(
            value=o.name in selected,
            description=f"{o.name} [{o.exactness}, {o.applies}]",
            tooltip=o.description,
            indent=False,
            layout=W.Layout(width="auto"),
        )
        for o in options
    }
    button = W.Button(description="bench ticked vs seed", button_style="primary")
    out = W.Output()

    def clicked(_: Any) -> None:
        with out:
            out.clear_output(wait=True)
            result = on_run([name for name, box in boxes.items() if box.value])
            if result is not None:
                display(result)

    button.on_click(clicked)
    return W.VBox(
        [W.GridBox(list(boxes.values()), layout=W.Layout(grid_template_columns="repeat(2, 1fr)")), button, out]
    )
