"""PNG figures for reports: training curves, success bars with Wilson intervals, frame strips. The analysis
package's only plotting module (matplotlib); it computes no statistics and runs no model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are rendered on machines without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CURVE_METRICS = (
    ("action_loss", "Action loss", "action loss (normalised MSE)"),
    ("world_loss", "World loss", "world loss (normalised MSE)"),
    ("gate_tanh", "Cross-attention gate", "tanh(gate)"),
)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def _series(records: Sequence[dict], metric: str) -> tuple[np.ndarray, np.ndarray]:
    # A resumed run appends the epochs it repeats; the last record of an epoch is the one that counts.
    by_epoch = {}
    for r in records:
        if r.get("kind", "train") != "train" or "epoch" not in r or r.get(metric) is None:
            continue
        by_epoch[r["epoch"]] = float(r[metric])
    epochs = np.array(sorted(by_epoch), dtype=float)
    return epochs, np.array([by_epoch[e] for e in sorted(by_epoch)])


def plot_training_curves(runs: Mapping[str, Sequence[dict]], path: str | Path) -> Path:
    """One panel per metric (action_loss, world_loss, gate_tanh) against epoch, one line per run."""
    if not runs:
        raise ValueError("plot_training_curves needs at least one run; got an empty mapping.")
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(5.2 * len(CURVE_METRICS), 4.0))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    # Runs often share their first epochs' values; distinct line styles and markers keep overlaps visible.
    styles, markers = ("-", "--", "-.", ":"), ("o", "s", "^", "D", "v")
    for ax, (metric, title, ylabel) in zip(axes, CURVE_METRICS):
        drawn = 0
        for i, (name, records) in enumerate(runs.items()):
            x, y = _series(records, metric)
            if len(x) == 0:
                continue
            ax.plot(
                x,
                y,
                ls=styles[i % len(styles)],
                marker=markers[i % len(markers)] if len(x) <= 30 else None,
                ms=5,
                mfc="none",
                color=colors[i % len(colors)],
                label=name,
            )
            drawn += 1
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if drawn:
            ax.legend(fontsize=9)
            if metric == "gate_tanh":
                ax.axhline(0.0, color="grey", lw=0.8)
        else:
            ax.text(0.5, 0.5, "not logged by any run", ha="center", va="center", transform=ax.transAxes, color="grey")
    fig.suptitle("Training curves (per-epoch means on the training set)")
    fig.tight_layout()
    return _save(fig, path)


def plot_success_bars(groups: Mapping[str, Mapping], path: str | Path, title: str) -> Path:
    """Bars of closed-loop success rate with Wilson error bars and "k/n" labels.

    groups: name -> {"rate", "lo", "hi", "n"} (rates in [0, 1]; "k" optional, else round(rate * n)); an optional
    "points" {label: rate} draws each rate as a dot on the bar (e.g. per-seed rates), one marker per label.
    """
    if not groups:
        raise ValueError(f"plot_success_bars ({title!r}) needs at least one group; got an empty mapping.")
    for name, g in groups.items():
        missing = [f for f in ("rate", "lo", "hi", "n") if f not in g]
        if missing:
            raise ValueError(f"group {name!r} lacks {missing}; expected keys rate, lo, hi, n.")
    names = list(groups)
    rate = np.array([groups[n]["rate"] for n in names], float) * 100
    lo = np.array([groups[n]["lo"] for n in names], float) * 100
    hi = np.array([groups[n]["hi"] for n in names], float) * 100
    ks = [groups[n].get("k", round(groups[n]["rate"] * groups[n]["n"])) for n in names]
    x = np.arange(len(names))
    long_names = max(len(str(n)) for n in names) > 10 or len(names) > 8
    fig, ax = plt.subplots(figsize=(max(4.5, 0.75 * len(names) + 2.0), 4.6 if long_names else 4.0))
    ax.bar(x, rate, width=0.65, color="#4C72B0", alpha=0.85, label="success rate")
    ax.errorbar(
        x, rate, yerr=[rate - lo, hi - rate], fmt="none", ecolor="black", capsize=4, lw=1.2, label="95% Wilson interval"
    )
    labels = list(dict.fromkeys(lab for n in names for lab in groups[n].get("points", {})))
    for j, lab in enumerate(labels):  # dots spread across the bar so that equal rates stay visible
        off = 0.0 if len(labels) == 1 else (j / (len(labels) - 1) - 0.5) * 0.36
        pts = [
            (xi + off, 100 * groups[n]["points"][lab]) for xi, n in zip(x, names) if lab in groups[n].get("points", {})
        ]
        ax.scatter(
            *zip(*pts), s=30, marker="osD^vP*X"[j % 8], color="#DD8452", edgecolor="black", lw=0.6, zorder=3, label=lab
        )
    for xi, hi_i, k, name in zip(x, hi, ks, names):
        hi_i = max([hi_i, *(100 * v + 2 for v in groups[name].get("points", {}).values())])  # label above the dots
        ax.text(xi, min(hi_i + 2, 103), f"{k}/{groups[name]['n']}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [str(n) for n in names], rotation=30 if long_names else 0, ha="right" if long_names else "center"
    )
    ax.set_ylim(0, 118 if labels else 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("closed-loop success rate (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, ncol=2 + (len(labels) > 0) + (len(labels) > 3), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def frame_strip(
    frames: Sequence[np.ndarray], path: str | Path, labels: Sequence[str] | None = None, title: str | None = None
) -> Path:
    """A row of HxWx3 uint8 frames saved as one PNG, each with an optional label underneath."""
    if len(frames) == 0:
        raise ValueError("frame_strip needs at least one frame; got none.")
    if labels is not None and len(labels) != len(frames):
        raise ValueError(
            f"frame_strip got {len(labels)} labels for {len(frames)} frames; expected one label per frame."
        )
    for i, f in enumerate(frames):
        f = np.asarray(f)
        if f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i} has shape {f.shape}; expected HxWx3 (uint8 RGB).")
    h, w = np.asarray(frames[0]).shape[:2]
    panel = 2.0  # inches per frame: small 32-128 px frames stay legible after upscaling
    fig, axes = plt.subplots(
        1,
        len(frames),
        figsize=(panel * len(frames), panel * h / w + (0.6 if title else 0.35)),
        squeeze=False,
        layout="constrained",
    )
    for i, (ax, f) in enumerate(zip(axes[0], frames)):
        ax.imshow(np.asarray(f, dtype=np.uint8), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if labels is not None:
            ax.set_xlabel(labels[i], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)
