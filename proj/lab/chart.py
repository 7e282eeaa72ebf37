"""A scenario's timeline as a PNG: one lane per worker, one bar per task labelled with its message.

Drawn from the scenario's record alone (see ``record``), with matplotlib's Agg backend. A run is one
panel; x is seconds since the run's first message was sent. In a lane, the thick bar is a task
running (started -> finished), the thin line under it the time the worker held the message before
starting it (prefetched). Kills are red lines, broker restarts grey bands, and the durability run
has a ``task_queue`` lane with one row per message waiting in the queue.
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

from proj.lab import record as rec

DPI = 110
WIDTH_IN = 12.0
LEFT_IN, RIGHT_IN = 1.35, 0.25
UNIT_IN = 0.42  # inches per y unit
FONT = 8

BAR_H, HELD_ROW, LABEL_ROW, QUEUE_ROW, PAD, MARK_BAND = 0.5, 0.13, 0.3, 0.34, 0.15, 0.55

COLORS = {
    "succeeded": "#4C72B0",
    "redelivered": "#55A868",
    "killed": "#C44E52",
    "lost": "#C44E52",
    "failed": "#DD8452",
    "running": "#8172B3",
    "held": "#7F7F7F",
    "queue": "#AEC7E8",
    "restart": "#BBBBBB",
    "kill": "#C44E52",
}


def _text_width_px(text: str, size: float = FONT) -> float:
    # matplotlib: heavy, and optional (proj[tools]); only when a chart is measured or drawn
    from matplotlib.textpath import TextPath

    return TextPath((0, 0), text, size=size).get_extents().width * DPI / 72.0


def _rows(intervals: list[tuple[float, float]]) -> list[int]:
    """Greedy interval colouring: a row index per interval so that no two in a row overlap."""
    ends: list[float] = []
    out = [0] * len(intervals)
    for i in sorted(range(len(intervals)), key=lambda i: intervals[i]):
        begin, end = intervals[i]
        row = next((r for r, e in enumerate(ends) if e <= begin), None)
        if row is None:
            ends.append(end)
            row = len(ends) - 1
        else:
            ends[row] = end
        out[i] = row
    return out


def _bars(run: dict, host: str) -> list[dict]:
    """The runs of tasks on one worker: start, end, colour, label."""
    bars = []
    for t in run["tasks"]:
        for d in t["deliveries"]:
            if d["worker"] != host or d["started"] is None:
                continue
            end = d["finished"] if d["finished"] is not None else d["started"]
            colour = (
                COLORS["redelivered"]
                if d["redelivered"] and d["outcome"] == "succeeded"
                else COLORS.get(d["outcome"], COLORS["running"])
            )
            bars.append(
                {
                    "x0": d["started"] - run["t0"],
                    "x1": end - run["t0"],
                    "colour": colour,
                    "hatch": "xx" if d["outcome"] in ("killed", "lost") else None,
                    "label": t["message"],
                }
            )
    return sorted(bars, key=lambda b: b["x0"])


def _held(run: dict, host: str) -> list[tuple[float, float]]:
    """When the worker held a message it had not started yet (received -> started)."""
    out = []
    for t in run["tasks"]:
        for d in t["deliveries"]:
            if d["worker"] != host or d["received"] is None:
                continue
            end = d["started"] or d["finished"] or d["received"]
            out.append((d["received"] - run["t0"], end - run["t0"]))
    return out


def _place_labels(bars: list[dict], px_per_s: float, x_centre: float = 0.0) -> int:
    """Inside the bar if it fits, else in the lowest label row above it where it overlaps no other label and
    no other bar's leader line; returns the rows used.

    A label outside its bar hangs from the bar's middle toward the middle of the chart: ending there
    (``align`` "right") in the right half, starting there in the left half. Short bars side by side at the
    chart's edge (the drained tasks of ``proj lab durability``) then get a staircase of labels, each
    beside its own leader line, none on top of another nor past the edge.
    """
    taken: list[list[tuple[float, float]]] = []
    leaders: list[tuple[float, int]] = []  # (x, the row its label is on): the line crosses every row below
    outside = []
    for b in bars:
        width_s = (_text_width_px(b["label"]) + 6) / px_per_s
        mid = (b["x0"] + b["x1"]) / 2
        if width_s <= b["x1"] - b["x0"]:
            b["row"] = -1
            continue
        b["align"] = "right" if mid > x_centre else "left"
        span = (mid - width_s, mid) if b["align"] == "right" else (mid, mid + width_s)
        outside.append((b, mid, span))
    # Toward the edge first on each side, so each later leader line passes beside the labels below it.
    outside.sort(key=lambda item: item[1] if item[0]["align"] == "right" else -item[1])

    def fits(row: int, mid: float, span: tuple[float, float], strict: bool) -> bool:
        spans = taken[row] if row < len(taken) else []
        free = all(span[1] <= s[0] or span[0] >= s[1] for s in spans)
        crossed = any(span[0] < x < span[1] and row < top for x, top in leaders)
        clear_below = not any(s[0] < mid < s[1] for lower in taken[:row] for s in lower)
        return free and not crossed and (clear_below or not strict)

    for b, mid, span in outside:
        row = next((r for r in range(len(taken) + 1) if fits(r, mid, span, True)), None)
        if row is None:  # no row keeps this leader clear of every label below: at least overlap nothing
            row = next(r for r in itertools.count() if fits(r, mid, span, False))
        while len(taken) <= row:
            taken.append([])
        taken[row].append(span)
        leaders.append((mid, row))
        b["row"] = row
    return len(taken)


def _layout(run: dict, px_per_s: float, x_centre: float = 0.0) -> tuple[list[dict], float]:
    """Lanes from the bottom up, each with its y positions; returns (lanes, height in y units)."""
    lanes = []
    y = 0.0
    for w in reversed(run["workers"]):
        host = w["hostname"]
        bars, held = _bars(run, host), _held(run, host)
        held_rows = _rows(held)
        depth = max(held_rows) + 1 if held else 0
        label_rows = _place_labels(bars, px_per_s, x_centre)
        bar_y = y + PAD + depth * HELD_ROW
        height = PAD + depth * HELD_ROW + BAR_H + label_rows * LABEL_ROW + PAD
        prefetch = "unlimited" if w.get("prefetch") == 0 else w.get("prefetch")
        lanes.append(
            {
                "name": f"{w['name']}\nprefetch {prefetch}",
                "y": y,
                "height": height,
                "bar_y": bar_y,
                "bars": bars,
                "held": [(h, y + PAD + (depth - 1 - r) * HELD_ROW + HELD_ROW / 2) for h, r in zip(held, held_rows)],
            }
        )
        y += height
    if run.get("queue_lane"):
        height = 2 * PAD + len(run["tasks"]) * QUEUE_ROW
        rows = []
        for i, t in enumerate(sorted(run["tasks"], key=lambda t: t["published"], reverse=True)):
            end = t["deliveries"][0]["received"] if t["deliveries"] else t["published"]
            rows.append((t["published"] - run["t0"], end - run["t0"], y + PAD + i * QUEUE_ROW, t["message"]))
        lanes.append({"name": "task_queue", "y": y, "height": height, "queue": rows})
        y += height
    return lanes, y + MARK_BAND


def _run_end(run: dict) -> float:
    ends = [run["t0"]]
    for t in run["tasks"]:
        for d in t["deliveries"]:
            ends += [v for v in (d["received"], d["started"], d["finished"]) if v is not None]
    ends += [m.get("until", m["at"]) for m in run["marks"]]
    return max(ends) - run["t0"]


def _title(run: dict) -> str:
    span = rec.makespan(run)
    if run.get("queue_lane") and span is not None:
        return f"{run['label']}: the messages wait in task_queue through the restart, then drain in {span:.2f} s"
    text = f"{run['label']}: makespan {span:.2f} s" if span is not None else run["label"]
    if run.get("lower_bound") is not None:
        text += f" (lower bound {run['lower_bound']:.2f} s)"
    return text


def render_png(result: dict, path, verdicts: bool = True):
    """Write the scenario's timeline chart to ``path`` (PNG: a file name or a binary file) and return it.

    ``verdicts=False`` leaves the verdict lines out, for a page that states them as text already.
    """
    # matplotlib: heavy, and optional (proj[tools]); only when a chart is drawn, its Agg backend chosen first
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import
    from matplotlib.patches import Patch

    runs = result["runs"]
    x_max = max(_run_end(r) for r in runs) * 1.04 + 0.05
    x_min = -0.02 * x_max
    axes_px = (WIDTH_IN - LEFT_IN - RIGHT_IN) * DPI
    px_per_s = axes_px / (x_max - x_min)
    # Room on the right for the "makespan" label that follows the last bar.
    for r in runs:
        span, begin = rec.makespan(r), rec.first_start(r)
        if r.get("lower_bound") is not None and span is not None:
            label_s = (_text_width_px(f" makespan {span:.2f} s") + 8) / px_per_s
            x_max = max(x_max, begin - r["t0"] + span + label_s)
    px_per_s = axes_px / (x_max - x_min)
    layouts = [_layout(r, px_per_s, (x_min + x_max) / 2) for r in runs]

    verdict_lines: list[tuple[str, str]] = []  # (text, colour)
    for v in result["verdicts"] if verdicts else []:
        head, colour = ("HOLDS", "#1a7f37") if v["holds"] else ("DOES NOT HOLD", "#b00020")
        verdict_lines += [(line, colour) for line in textwrap.wrap(f"{head}: \u201c{v['claim']}\u201d", 165)]
        verdict_lines += [
            (line, "#333333")
            for line in textwrap.wrap(v["detail"], 160, initial_indent="    ", subsequent_indent="    ")
        ]
    header_in, title_in, axis_in = 0.5, 0.3, 0.45
    footer_in = 0.55 + 0.19 * len(verdict_lines)
    panels_in = [title_in + h * UNIT_IN + axis_in for _, h in layouts]
    height_in = header_in + sum(panels_in) + footer_in

    fig = plt.figure(figsize=(WIDTH_IN, height_in), dpi=DPI)
    fig.suptitle(result["title"], x=LEFT_IN / WIDTH_IN, ha="left", y=1 - 0.18 / height_in, fontsize=11, weight="bold")
    top = height_in - header_in
    for run, (lanes, height), panel_in in zip(runs, layouts, panels_in):
        ax_h = height * UNIT_IN
        bottom = top - title_in - ax_h
        ax = fig.add_axes(
            (LEFT_IN / WIDTH_IN, bottom / height_in, (WIDTH_IN - LEFT_IN - RIGHT_IN) / WIDTH_IN, ax_h / height_in)
        )
        _draw_run(ax, run, lanes, height, x_min, x_max)
        ax.set_title(_title(run), loc="left", fontsize=9)
        top -= panel_in
    ax.set_xlabel("seconds since the run's first message was sent", fontsize=FONT)

    outcomes = {
        ("redelivered" if d["redelivered"] else d["outcome"]) for r in runs for t in r["tasks"] for d in t["deliveries"]
    }
    legend = [Patch(color=COLORS["succeeded"], label="task running")] if "succeeded" in outcomes else []
    if "redelivered" in outcomes:
        legend.append(Patch(color=COLORS["redelivered"], label="redelivered, running"))
    if outcomes & {"killed", "lost"}:
        legend.append(Patch(facecolor=COLORS["killed"], hatch="xx", label="killed mid-task"))
    if "failed" in outcomes:
        legend.append(Patch(color=COLORS["failed"], label="failed"))
    legend.append(Patch(color=COLORS["held"], label="held by the worker, not started yet (prefetched)"))
    if any(r.get("queue_lane") for r in runs):
        legend.append(Patch(color=COLORS["queue"], label="waiting in task_queue"))
    if any(m["kind"] == "broker-restart" for r in runs for m in r["marks"]):
        legend.append(Patch(color=COLORS["restart"], label="broker restart"))
    fig.legend(
        handles=legend,
        loc="lower left",
        ncol=len(legend),
        fontsize=FONT,
        frameon=False,
        bbox_to_anchor=(LEFT_IN / WIDTH_IN, (0.19 * len(verdict_lines) + 0.12) / height_in),
    )
    for i, (line, colour) in enumerate(verdict_lines):
        fig.text(
            LEFT_IN / WIDTH_IN, (0.19 * (len(verdict_lines) - i) - 0.08) / height_in, line, fontsize=FONT, color=colour
        )
    if isinstance(path, str | Path):
        path = Path(path)
    fig.savefig(path, format="png", dpi=DPI)
    plt.close(fig)
    return path


def _draw_run(ax, run: dict, lanes: list[dict], height: float, x_min: float, x_max: float) -> None:
    ax.set_xlim(x_min, x_max)
    ax.set_ylim(0, height)
    ax.tick_params(labelsize=FONT)
    ax.grid(axis="x", color="#eeeeee", zorder=0)
    ticks, names = [], []
    for lane in lanes:
        ax.axhline(lane["y"], color="#dddddd", lw=0.8, zorder=1)
        if "queue" in lane:
            for x0, x1, y, message in lane["queue"]:
                ax.barh(y + QUEUE_ROW / 2, x1 - x0, left=x0, height=QUEUE_ROW * 0.8, color=COLORS["queue"], zorder=2)
                ax.text(x0 + 0.005 * (x_max - x_min), y + QUEUE_ROW / 2, message, va="center", fontsize=FONT, zorder=4)
            ticks.append(lane["y"] + lane["height"] / 2)
            names.append(lane["name"])
            continue
        for (x0, x1), y in lane["held"]:
            ax.plot([x0, x1], [y, y], color=COLORS["held"], lw=2, solid_capstyle="butt", zorder=2)
            ax.plot([x0], [y], marker="o", ms=3, color=COLORS["held"], zorder=2)
        centre_y = lane["bar_y"] + BAR_H / 2
        for b in lane["bars"]:
            ax.barh(
                centre_y,
                max(b["x1"] - b["x0"], 1e-3),
                left=b["x0"],
                height=BAR_H,
                color=b["colour"],
                hatch=b["hatch"],
                edgecolor="white",
                lw=0.8,
                zorder=3,
            )
            mid = (b["x0"] + b["x1"]) / 2
            if b["row"] < 0:
                # A hatched (killed) bar gets a backing box so its label stays readable.
                box = {"facecolor": b["colour"], "edgecolor": "none", "pad": 1.5} if b["hatch"] else None
                ax.text(
                    mid,
                    centre_y,
                    b["label"],
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=FONT,
                    zorder=4,
                    bbox=box,
                )
            else:
                label_y = lane["bar_y"] + BAR_H + (b["row"] + 0.5) * LABEL_ROW
                ax.plot([mid, mid], [lane["bar_y"] + BAR_H, label_y], color="#999999", lw=0.6, zorder=2)
                ax.annotate(
                    b["label"],
                    (mid, label_y),
                    xytext=(-3 if b["align"] == "right" else 3, 0),
                    textcoords="offset points",
                    ha=b["align"],
                    va="center",
                    fontsize=FONT,
                    zorder=4,
                )
        ticks.append(centre_y)
        names.append(lane["name"])
    ax.set_yticks(ticks, names)
    _draw_marks(ax, run, height)


def _draw_marks(ax, run: dict, height: float) -> None:
    text_y = height - 0.28
    begin = rec.first_start(run)
    for m in run["marks"]:
        x = m["at"] - run["t0"]
        if m["kind"] == "kill":
            ax.axvline(x, color=COLORS["kill"], lw=1.5, zorder=5)
            who = rec.short(m["worker"])
            target = f"{who}'s pool child" if m.get("target") == "pool child" else who
            text = f" {m['signal']} \u2192 {target} (pid {m['pid']})"
            ax.text(x, text_y, text, color=COLORS["kill"], fontsize=FONT, va="center")
        elif m["kind"] == "broker-restart":
            x1 = m["until"] - run["t0"]
            ax.axvspan(x, x1, color=COLORS["restart"], alpha=0.45, zorder=1, lw=0)
            ax.text(
                (x + x1) / 2,
                text_y,
                f"broker restart ({x1 - x:.1f} s): {m['depth_before']} messages in task_queue before, "
                f"{m['depth_after']} after"
                if "depth_before" in m
                else f"broker restart ({x1 - x:.1f} s)",
                ha="center",
                va="center",
                fontsize=FONT,
            )
    if run.get("lower_bound") is not None and begin is not None:
        bound_x = begin - run["t0"] + run["lower_bound"]
        ax.axvline(bound_x, color="#333333", ls="--", lw=1, zorder=5)
        ax.text(bound_x, text_y, f"lower bound {run['lower_bound']:.2f} s ", ha="right", va="center", fontsize=FONT)
        span = rec.makespan(run)
        if span is not None:
            end_x = begin - run["t0"] + span
            ax.axvline(end_x, color="#333333", ls=":", lw=1, zorder=5)
            ax.text(end_x, text_y, f" makespan {span:.2f} s", ha="left", va="center", fontsize=FONT)
