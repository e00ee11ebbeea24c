"""Figures for the notebooks. Every function returns a matplotlib Figure and never shows it."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

sns.set_theme(style="whitegrid", context="notebook")
PALETTE = sns.color_palette("deep")
GT_COLOUR, PRED_COLOUR = "#2ca02c", "#d62728"


def _fig(w: float = 7.0, h: float = 4.0, ncols: int = 1, nrows: int = 1) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False)
    plt.close(fig)  # the notebook displays the returned figure; pyplot must not keep it alive
    return fig, ax


def draw_boxes(ax: Any, boxes: np.ndarray, colour: str, label: str | None = None, lw: float = 1.5) -> None:
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, dtype=float).reshape(-1, 4)):
        ax.add_patch(
            plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, lw=lw, label=label if i == 0 else None)
        )


# ---------------------------------------------------------------- data (01)
def box_size_hist(sizes: pd.DataFrame) -> Figure:
    """``sizes`` has columns ``w``, ``h`` (native px) and ``video``."""
    fig, ax = _fig(10, 3.5, ncols=2)
    side = np.sqrt(sizes["w"] * sizes["h"])
    sns.histplot(side, bins=30, ax=ax[0, 0], color=PALETTE[0])
    ax[0, 0].set(xlabel="box side sqrt(w*h), native px", ylabel="boxes", title="box sizes")
    sns.scatterplot(data=sizes, x="w", y="h", hue="video", s=8, ax=ax[0, 1], legend=False)
    ax[0, 1].set(xlabel="w (px)", ylabel="h (px)", title="box w vs h per video")
    return fig


def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    boxes: Sequence[Any] | None = None,
    pred_boxes: Sequence[Any] | None = None,
    ncols: int = 4,
    size: float = 3.0,
) -> Figure:
    """RGB images in a grid, with ground-truth (green) and predicted (red) boxes when given."""
    n = len(images)
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, ax = _fig(size * ncols, size * nrows * 0.75, ncols=ncols, nrows=nrows)
    for i, a in enumerate(ax.flat):
        a.axis("off")
        if i >= n:
            continue
        a.imshow(images[i])
        a.set_title(titles[i], fontsize=8)
        if boxes is not None and boxes[i] is not None and len(boxes[i]):
            draw_boxes(a, boxes[i], GT_COLOUR)
        if pred_boxes is not None and pred_boxes[i] is not None and len(pred_boxes[i]):
            draw_boxes(a, pred_boxes[i], PRED_COLOUR)
    fig.tight_layout()
    return fig


def bar_chart(
    values: Mapping[str, float], *, ylabel: str, title: str, log: bool = False, annotate: str = "{:.2f}"
) -> Figure:
    fig, ax = _fig(7, 3.5)
    a = ax[0, 0]
    names = list(values)
    bars = a.bar(names, [values[k] for k in names], color=PALETTE[: len(names)])
    for bar, name in zip(bars, names):
        a.annotate(
            annotate.format(values[name]),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    a.set(ylabel=ylabel, title=title)
    if log:
        a.set_yscale("log")
    else:
        a.set_ylim(top=max([*values.values(), 0]) * 1.12 or None)  # room for the value labels
    a.tick_params(axis="x", rotation=15)
    return fig


def line_chart(
    df: pd.DataFrame, *, x: str, ys: Sequence[str], title: str, ylabel: str = "", logy: bool = False
) -> Figure:
    fig, ax = _fig(7, 3.5)
    a = ax[0, 0]
    for i, y in enumerate(ys):
        if y in df:
            a.plot(df[x], df[y], marker="o" if len(df) < 30 else None, label=y, color=PALETTE[i % len(PALETTE)])
    a.set(xlabel=x, ylabel=ylabel, title=title)
    if x in df and pd.api.types.is_integer_dtype(df[x]):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, steps: no fractional ticks
    if logy:
        a.set_yscale("log")
    a.legend()
    return fig


# ---------------------------------------------------------------- model (02)
def param_breakdown(table: pd.DataFrame, *, reference: Mapping[str, float] | None = None, title: str = "") -> Figure:
    """Bars of trainable/frozen parameters per module (M), the original's figures beside them, and a pie."""
    fig, ax = _fig(12, 4, ncols=2)
    mods = [m for m in table.index if m != "total"]
    x = np.arange(len(mods))
    trainable = table.loc[mods, "trainable"] / 1e6
    frozen = table.loc[mods, "frozen"] / 1e6
    a = ax[0, 0]
    a.bar(x - 0.2, trainable, 0.4, label="trainable", color=PALETTE[0])
    ours = a.bar(x - 0.2, frozen, 0.4, bottom=trainable, label="frozen", color=PALETTE[7])
    a.bar_label(ours, labels=[f"{t:.2f}" for t in trainable + frozen], fontsize=8)
    if reference:
        original = a.bar(x + 0.2, [reference.get(m, 0) / 1e6 for m in mods], 0.4, label="original", color=PALETTE[1])
        a.bar_label(original, fmt="%.2f", fontsize=8)
    a.set_xticks(x, mods, rotation=15)
    a.set(ylabel="parameters (M)", title=title or "parameters per module")
    a.legend()
    total = table.loc[mods, "total"]
    ax[0, 1].pie(
        total,
        labels=[f"{m}\n{t / 1e6:.2f} M" for m, t in total.items()],
        autopct="%1.0f%%",
        colors=PALETTE[: len(mods)],
    )
    ax[0, 1].set_title(f"total {total.sum() / 1e6:.2f} M ({total.sum() / 50e6:.0%} of 50 M)")
    return fig


# ---------------------------------------------------------------- speed (03, 04)
def stacked_breakdown(df: pd.DataFrame, *, title: str, unit: str = "ms") -> Figure:
    """``df``: rows = presets/settings, columns = components (ms); one stacked bar per row."""
    fig, ax = _fig(8, 0.9 * len(df) + 2)
    left = np.zeros(len(df))
    width = float(df.sum(axis=1).max()) if len(df) else 0.0
    for i, col in enumerate(df.columns):
        bars = ax[0, 0].barh(df.index, df[col], left=left, label=col, color=sns.color_palette("tab20")[i % 20])
        shown = [f"{v:.0f}" if v >= 0.08 * width else "" for v in df[col]]  # only segments wide enough for text
        ax[0, 0].bar_label(bars, labels=shown, label_type="center", fontsize=7)
        left += df[col].to_numpy()
    for y, total in enumerate(left):
        ax[0, 0].annotate(f"{total:.0f} {unit}", (total, y), va="center", ha="left", fontsize=9)
    ax[0, 0].set(xlabel=f"{unit} per training step", title=title)
    ax[0, 0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=5, fontsize=8)
    return fig


def speedup_chart(speedups: Mapping[str, float], *, title: str = "training episodes/s relative to seed") -> Figure:
    return bar_chart(speedups, ylabel="x seed", title=title, annotate="{:.1f}x")


def chosen_vs_seed(speedups: Mapping[str, float], options: Sequence[str], *, title: str) -> Figure:
    """Two bars (``seed``, ``chosen``) with the chosen options written under the axes, wrapped."""
    fig = bar_chart(speedups, ylabel="x seed", title=title, annotate="{:.2f}x")
    a = fig.axes[0]
    a.tick_params(axis="x", rotation=0)
    note = textwrap.fill("chosen = seed + " + ", ".join(options), width=90)
    a.text(0.0, -0.14, note, transform=a.transAxes, ha="left", va="top", fontsize=8, color="0.3")
    return fig


# ---------------------------------------------------------------- training (05)
def training_curves(history: pd.DataFrame, *, terms: Sequence[str] = ()) -> Figure:
    fig, ax = _fig(12, 3.6, ncols=2)
    a = ax[0, 0]
    a.plot(history["step"], history["loss"], label="loss", color=PALETTE[0], alpha=0.35)
    a.plot(
        history["step"], history["loss"].rolling(10, min_periods=1).mean(), label="loss (mean of 10)", color=PALETTE[0]
    )
    for i, t in enumerate(terms):
        if t in history:
            a.plot(history["step"], history[t].rolling(10, min_periods=1).mean(), label=t, color=PALETTE[i + 1], lw=1)
    a.set(xlabel="optimizer step", ylabel="loss", title="training loss")
    a.set_yscale("log")
    a.legend(fontsize=8)
    ax[0, 1].plot(history["step"], history["lr"], color=PALETTE[3])
    ax[0, 1].set(xlabel="optimizer step", ylabel="learning rate", title="learning rate")
    return fig


# ---------------------------------------------------------------- validation (06)
def st_iou_bars(series: Mapping[str, Mapping[str, float]]) -> Figure:
    """Grouped bars: ST-IoU per video for each named series (e.g. the model, an ablation, the baseline)."""
    vids = sorted({v for scores in series.values() for v in scores})
    fig, ax = _fig(max(6, 0.5 * len(series) * len(vids) + 2), 3.5)
    x, width = np.arange(len(vids)), 0.8 / max(1, len(series))
    for i, (name, scores) in enumerate(series.items()):
        offset = (i - (len(series) - 1) / 2) * width
        colour = PALETTE[7] if name == "template matching" else PALETTE[i]
        bars = ax[0, 0].bar(x + offset, [scores.get(v, 0) for v in vids], width, label=name, color=colour)
        ax[0, 0].bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax[0, 0].set_xticks(x, vids, rotation=15)
    ax[0, 0].set(ylabel="ST-IoU", ylim=(0, 1.1), title="ST-IoU per validation video")
    ax[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    return fig


def timeline(
    frames: int,
    gt_frames: Sequence[int],
    pred_frames: Sequence[int],
    scores: np.ndarray | None,
    *,
    title: str,
    thresholds: Sequence[float] = (),
) -> Figure:
    """Ground-truth vs predicted frames of one video, with the per-frame score curve."""
    fig, ax = _fig(10, 2.4)
    a = ax[0, 0]
    a.scatter(gt_frames, np.full(len(gt_frames), 1.08), marker="|", color=GT_COLOUR, s=60, label="ground truth")
    a.scatter(pred_frames, np.full(len(pred_frames), 1.16), marker="|", color=PRED_COLOUR, s=60, label="predicted")
    if scores is not None:
        a.plot(np.arange(len(scores)), scores, color=PALETTE[0], lw=1, label="score")
    for t in thresholds:
        a.axhline(t, color="grey", ls="--", lw=0.8)
    a.set(xlim=(0, frames), ylim=(0, 1.22), xlabel="frame", ylabel="score", title=title)
    a.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7)  # outside: the rows stay readable
    return fig
