"""What a scenario shows people: a console table and verdicts, a JSON record, a PNG and an HTML page.

The HTML page is self-contained (the PNG embedded as base64, the table as HTML), so it can be
mailed or attached to an issue as one file.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from proj.lab import record as rec
from proj.lab.chart import render_png

OK, FAIL, SKIP = " [ok]", " [FAIL]", " [skip]"


def _at(value: float | None, t0: float) -> str:
    return "-" if value is None else f"+{value - t0:.2f}"


def rows(result: dict) -> list[tuple[str, list[list[str]]]]:
    """Per run: (label, rows of message, worker, received, started, finished, redelivered), one row per delivery."""
    out = []
    for run in result["runs"]:
        t0 = run["t0"]
        table = []
        for t in sorted(run["tasks"], key=lambda t: t["published"]):
            for d in t["deliveries"] or [None]:
                if d is None:
                    table.append([t["message"], "-", "-", "-", "never", "-"])
                    continue
                finished = _at(d["finished"], t0)
                if d["outcome"] not in ("succeeded",):
                    finished = f"{d['outcome']} {finished}" if d["finished"] is not None else d["outcome"]
                table.append(
                    [
                        t["message"],
                        rec.short(d["worker"]),
                        _at(d["received"], t0),
                        _at(d["started"], t0),
                        finished,
                        "yes" if d["redelivered"] else "no",
                    ]
                )
        out.append((run["label"], table))
    return out


HEADER = ["message", "worker", "received", "started", "finished", "redelivered"]


def console(result: dict) -> list[str]:
    """The scenario's table(s), per-worker busy/idle where measured, and verdict lines."""
    lines = [f" == {result['title']}"]
    if result.get("skipped"):
        return lines + [f"{SKIP} {result['scenario']}: {result['skipped']}"]
    for (label, table), run in zip(rows(result), result["runs"]):
        if len(result["runs"]) > 1:
            lines.append(f"   -- {label} --")
        widths = [max(len(r[i]) for r in [HEADER, *table]) for i in range(len(HEADER))]
        lines.append("   " + "  ".join(h.ljust(w) for h, w in zip(HEADER, widths)).rstrip())
        for r in table:
            lines.append("   " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if "busy" in run:
            lines.append(
                "   "
                + "; ".join(
                    f"{rec.short(h)} busy {run['busy'][h]:.2f} s, idle {run['idle'][h]:.2f} s" for h in run["busy"]
                )
                + f"; makespan {run['makespan']:.2f} s, lower bound {run['lower_bound']:.2f} s"
            )
    if "queue_depth" in result:
        q = result["queue_depth"]
        lines.append(
            f"   task_queue depth: {q['before_restart']} before the restart, {q['after_restart']} after, "
            f"{q['after_drain']} once drained"
        )
    lines += verdict_lines(result)
    return lines


def verdict_lines(result: dict) -> list[str]:
    if result.get("skipped"):
        return [f"{SKIP} {result['scenario']}: {result['skipped']}"]
    return [
        f"{OK if v['holds'] else FAIL} {result['scenario']}: \u201c{v['claim']}\u201d "
        f"{'holds' if v['holds'] else 'DOES NOT HOLD'}: {v['detail']}"
        for v in result["verdicts"]
    ]


def summary_lines(result: dict) -> list[str]:
    """One line per verdict, without the quote: the per-scenario output above has it."""
    name = result["scenario"].ljust(14)
    if result.get("skipped"):
        return [f"{SKIP} {name} {result['skipped']}"]
    return [f"{OK if v['holds'] else FAIL} {name} {v['detail']}" for v in result["verdicts"]]


def holds(result: dict) -> bool:
    return all(v["holds"] for v in result["verdicts"])


# -- files ---------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.5em; }
.verdict { padding: .4em .8em; border-left: 4px solid; margin: .5em 0; }
.holds { border-color: #1a7f37; background: #eef8f0; } .fails { border-color: #b00020; background: #fdeeee; }
.skipped { border-color: #999; background: #f4f4f4; }
blockquote { margin: .2em 0; font-style: italic; }
table { border-collapse: collapse; font-size: .9em; } td, th { padding: .2em .7em; border-bottom: 1px solid #ddd; }
th { text-align: left; background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def html_page(result: dict, png: bytes | None) -> str:
    """A self-contained page: verdicts, the chart (embedded, ``png``: without its verdict lines, which the page
    states as text), and a table naming every message."""
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>proj lab: {e(result['scenario'])}</title><style>{STYLE}</style></head><body>",
        f"<h1>{e(result['title'])}</h1>",
    ]
    settings = ", ".join(f"{k}: {v}" for k, v in result["settings"].items())
    parts.append(f"<p>{e(settings)}</p>")
    if result.get("skipped"):
        parts.append(f'<p class="verdict skipped">Skipped: {e(result["skipped"])}</p></body></html>')
        return "\n".join(parts)
    for v in result["verdicts"]:
        cls, word = ("holds", "Holds") if v["holds"] else ("fails", "Does not hold")
        parts.append(
            f'<div class="verdict {cls}"><blockquote>\u201c{e(v["claim"])}\u201d</blockquote>'
            f"<strong>{word}</strong>: {e(v['detail'])}</div>"
        )
    if png is not None:
        data = base64.b64encode(png).decode("ascii")
        parts.append(f'<p><img alt="timeline of {e(result["scenario"])}" src="data:image/png;base64,{data}"></p>')
    for (label, table), run in zip(rows(result), result["runs"]):
        parts.append(f"<h2>{e(label)}</h2>")
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in HEADER) + "</tr>")
        for r in table:
            cells = [f"<td>{e(r[0])}</td>", f"<td>{e(r[1])}</td>"]
            cells += [f'<td class="num">{e(c)}</td>' for c in r[2:5]] + [f"<td>{e(r[5])}</td>"]
            parts.append("<tr>" + "".join(cells) + "</tr>")
        parts.append("</table>")
        if "busy" in run:
            parts.append("<table><tr><th>worker</th><th>busy (s)</th><th>idle (s)</th></tr>")
            for h in run["busy"]:
                parts.append(
                    f'<tr><td>{e(rec.short(h))}</td><td class="num">{run["busy"][h]:.2f}</td>'
                    f'<td class="num">{run["idle"][h]:.2f}</td></tr>'
                )
            parts.append(
                f"</table><p>makespan {run['makespan']:.2f} s; lower bound {run['lower_bound']:.2f} s "
                "= max(longest task, total work / workers)</p>"
            )
    parts.append("<p>Times are seconds since the run's first message was sent, from Celery's event stream.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def chart_name(scenario: str) -> str:
    """The file of a scenario's chart without its verdict lines."""
    return f"{scenario}-chart.png"


def write_files(result: dict, out_dir: Path) -> dict[str, Path]:
    """``NAME.json``, ``NAME.png``, ``NAME-chart.png`` and ``NAME.html`` in ``out_dir``; returns their paths.

    ``NAME.png`` stands alone, so it carries the verdicts; ``NAME-chart.png`` is the same chart without
    them, for the pages (``NAME.html`` embeds it, ``index.html`` shows it), which state them as text.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    name = result["scenario"]
    paths = {"json": out_dir / f"{name}.json"}
    png = None
    if result["runs"]:
        paths["png"] = render_png(result, out_dir / f"{name}.png")
        paths["chart"] = render_png(result, out_dir / chart_name(name), verdicts=False)
        png = paths["chart"].read_bytes()
    paths["html"] = out_dir / f"{name}.html"
    paths["html"].write_text(html_page(result, png), encoding="utf-8")
    result = {**result, "files": {k: p.name for k, p in paths.items()}}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return paths


def write_index(results: list[dict], out_dir: Path, elapsed: float) -> Path:
    """``all.json`` (every record) and ``index.html`` (every verdict, linking each scenario's page)."""
    e = html.escape
    (out_dir / "all.json").write_text(
        json.dumps({"elapsed": elapsed, "holds": all(holds(r) for r in results), "scenarios": results}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8"><title>proj lab all</title>',
        f"<style>{STYLE}</style></head><body><h1>proj lab all: the tutorial's experiments</h1>",
        f"<p>{len(results)} scenarios in {elapsed:.1f} s.</p>",
    ]
    for r in results:
        parts.append(f'<h2><a href="{e(r["scenario"])}.html">{e(r["title"])}</a></h2>')
        if r.get("skipped"):
            parts.append(f'<p class="verdict skipped">Skipped: {e(r["skipped"])}</p>')
            continue
        for v in r["verdicts"]:
            cls = "holds" if v["holds"] else "fails"
            parts.append(f'<div class="verdict {cls}">\u201c{e(v["claim"])}\u201d<br>{e(v["detail"])}</div>')
        # The chart without its verdict lines: they are stated just above, once.
        if (out_dir / chart_name(r["scenario"])).exists():
            chart = e(chart_name(r["scenario"]))
            parts.append(f'<p><a href="{e(r["scenario"])}.html"><img alt="" src="{chart}"></a></p>')
    parts.append("</body></html>")
    path = out_dir / "index.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
