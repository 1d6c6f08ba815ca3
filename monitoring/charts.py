"""Plotly figures as plain dicts, built from the aggregates (pure functions: no request, no database).

Pages embed them as JSON and one small script per page draws them with the vendored
plotly.js cartesian bundle (static/vendor/plotly-cartesian.min.js: scatter, bar and heatmap traces,
1.5 MB instead of the full 4.8 MB bundle), so charts work with no internet.
"""

from __future__ import annotations

from typing import Any

Figure = dict[str, Any]
HEAT = [[0, "#eff6ff"], [1, "#1e40af"]]
COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#be185d"]


# Values on axes and in tooltips: three significant figures ("0.364 ms", not "0.3644 ms").
NUMBER_FORMAT = ".3~g"
# Latency charts offer a log scale: one slow cold start would otherwise flatten every other point.
SCALE_BUTTONS = [{
    "type": "buttons", "direction": "left", "showactive": True, "x": 1, "xanchor": "right", "y": 1.18,
    "yanchor": "top", "pad": {"r": 0, "t": 0}, "font": {"size": 11},
    "buttons": [{"label": "linear", "method": "relayout", "args": [{"yaxis.type": "linear"}]},
                {"label": "log", "method": "relayout", "args": [{"yaxis.type": "log"}]}],
}]  # fmt: skip


def _layout(
    title: str, y_title: str, *, log_scale: bool = False, time_axis: bool = False, **extra: Any
) -> dict[str, Any]:
    """A chart's layout. A `time_axis` chart (numbers over time) has margins fixed to fit its ticks
    (at most 5 characters with NUMBER_FORMAT, two-line dates): plotly's automargin draws a chart
    twice, which doubled the time a chart page took to draw."""
    automargin = not time_axis
    yaxis = {"title": {"text": y_title, "standoff": 8}, "rangemode": "tozero", "automargin": automargin,
             "tickformat": NUMBER_FORMAT, "hoverformat": NUMBER_FORMAT, **extra.pop("yaxis", {})}  # fmt: skip
    layout = {
        # Left-aligned: the linear/log buttons on the right no longer cover the end of long titles.
        "title": {"text": title, "font": {"size": 14}, "x": 0.02, "xanchor": "left"},
        "margin": {"l": 72, "r": 15, "t": 40, "b": 52} if time_axis else {"l": 55, "r": 15, "t": 40, "b": 40},
        "height": 280,
        "yaxis": yaxis,
        "xaxis": {"automargin": automargin, **extra.pop("xaxis", {})},
        "legend": {"orientation": "h", "y": -0.2},
        **extra,
    }
    if log_scale:
        layout["updatemenus"] = SCALE_BUTTONS
    return layout


def _line(name: str, x: list[str], y: list[Any], colour: str, dash: str = "solid") -> dict[str, Any]:
    return {"type": "scatter", "mode": "lines+markers", "name": name, "x": x, "y": y, "connectgaps": False,
            "line": {"color": colour, "dash": dash, "width": 2}, "marker": {"size": 4}}  # fmt: skip


def traffic_figures(series: dict[str, Any], *, per_version: bool = False) -> dict[str, Figure]:
    """Requests/s, error rate, p50/p95/p99 latency and queue vs compute time over a window.

    With `per_version` (series split by version) latency is one p95 line per version.
    """
    times = series["times"]
    lines = series["series"]
    many = per_version or len(lines) > 1
    latency = []
    for i, line in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        prefix = f"{line['name']} " if many else ""
        if many:
            latency.append(_line(f"{prefix}p95", times, line["p95"], colour))
        else:
            latency += [_line("p50", times, line["p50"], COLOURS[0]), _line("p95", times, line["p95"], COLOURS[4]),
                        _line("p99", times, line["p99"], COLOURS[1])]  # fmt: skip
    queue_compute = []
    for i, line in enumerate(lines):
        prefix = f"{line['name']} " if many else ""
        # One series: queue and compute in colours of their own; per version, the version's
        # colour with queue dotted.
        compute = COLOURS[i % len(COLOURS)] if many else COLOURS[0]
        queue = compute if many else COLOURS[4]
        queue_compute += [_line(f"{prefix}queue", times, line["queue_ms"], queue, "dot"),
                          _line(f"{prefix}compute", times, line["compute_ms"], compute)]  # fmt: skip
    return {
        "rps": {"data": [_line(line["name"], times, line["rps"], COLOURS[i % len(COLOURS)])
                         for i, line in enumerate(lines)],
                "layout": _layout("Requests per second", "req/s", time_axis=True)},
        "errors": {"data": [_line(line["name"], times, line["error_rate"], COLOURS[i % len(COLOURS)])
                            for i, line in enumerate(lines)],
                   "layout": _layout("Error rate", "share of requests", time_axis=True, yaxis={"tickformat": ".0%",
                                                                              "hoverformat": ".1%"})},
        "latency": {"data": latency, "layout": _layout("Latency" + (" p95 per version" if many else " p50 / p95 / p99"),
                                                       "ms", time_axis=True, log_scale=True)},
        "queue_compute": {"data": queue_compute, "layout": _layout("Queue wait vs compute (mean)", "ms", time_axis=True,
                                                                   log_scale=True)},
    }  # fmt: skip


def batch_size_figure(histogram: dict[str, int]) -> Figure:
    """How many predictions rode in batches of each size."""
    return {
        "data": [{"type": "bar", "x": list(histogram), "y": list(histogram.values()), "marker": {"color": COLOURS[0]},
                  "name": "predictions"}],
        "layout": _layout("Batch size distribution", "predictions", xaxis={"title": {"text": "rows in the batch"},
                                                                            "type": "category"}),
    }  # fmt: skip


def version_latency_figure(stats: list[dict[str, Any]]) -> Figure:
    """p50/p95/p99 serving latency of each version side by side."""
    names = [f"v{s['version']}" for s in stats if s["count"]]
    picked = [s for s in stats if s["count"]]
    return {
        "data": [{"type": "bar", "name": q, "x": names, "y": [s["latency_ms"][q] for s in picked],
                  "marker": {"color": colour}}
                 for q, colour in (("p50", COLOURS[0]), ("p95", COLOURS[4]), ("p99", COLOURS[1]))],
        "layout": _layout("Serving latency by version", "ms", barmode="group"),
    }  # fmt: skip


def accuracy_figure(rows: list[dict[str, Any]], metric: str, production: int | None) -> Figure:
    """One evaluation metric of every version (latest run per dataset), production marked."""
    datasets = sorted({r["dataset"] for r in rows})
    data = []
    for i, dataset in enumerate(datasets):
        mine = sorted((r for r in rows if r["dataset"] == dataset), key=lambda r: r["version"])
        data.append({
            "type": "bar", "name": dataset,
            "x": [f"v{r['version']}" + (" (production)" if r["version"] == production else "") for r in mine],
            "y": [r["metrics"].get(metric) for r in mine], "marker": {"color": COLOURS[i % len(COLOURS)]},
        })  # fmt: skip
    return {"data": data, "layout": _layout(f"{metric} across versions", metric, barmode="group")}


def confusion_figure(matrix: list[list[int]], labels: list[str], title: str) -> Figure:
    """A confusion matrix as a heatmap (rows: true class, columns: predicted)."""
    names = labels if labels and len(labels) == len(matrix) else [str(i) for i in range(len(matrix))]
    return {
        "data": [{"type": "heatmap", "z": matrix, "x": names, "y": names, "colorscale": HEAT, "showscale": True,
                  "text": matrix, "texttemplate": "%{text}", "hovertemplate": "true %{y}, predicted %{x}: %{z}"}],
        "layout": _layout(title, "true class", xaxis={"title": {"text": "predicted class"}},
                          yaxis={"title": {"text": "true class"}, "autorange": "reversed"}, height=320),
    }  # fmt: skip


def has_data(figure: Figure) -> bool:
    """True when some trace has a value (what the pages show instead of an empty chart)."""
    for trace in figure.get("data", []):
        values = trace.get("y") if trace.get("type") != "heatmap" else trace.get("z")
        if values and any(v is not None and v != 0 for v in values):
            return True
    return False


def tokens_figure(series: dict[str, Any]) -> Figure:
    """Model tokens per minute of each version: prompt (solid) and completion (dotted)."""
    times, data = series["times"], []
    for i, line in enumerate(series["series"]):
        colour = COLOURS[i % len(COLOURS)]
        data += [_line(f"{line['name']} prompt", times, line["prompt"], colour),
                 _line(f"{line['name']} completion", times, line["completion"], colour, "dot")]  # fmt: skip
    return {"data": data, "layout": _layout("Tokens per minute", "tokens/min", time_axis=True)}


def generation_figures(series: dict[str, Any]) -> dict[str, Figure]:
    """Time to first token (p50 solid, p95 dotted), inter-token latency (p50 solid, mean dotted)
    and output tokens/s of each version's generated answers over a window."""
    times = series["times"]
    lines = [line for line in series["series"] if line.get("generated")]
    ttft, gaps, speed = [], [], []
    for i, line in enumerate(lines):
        colour = COLOURS[i % len(COLOURS)]
        ttft += [_line(f"{line['name']} p50", times, line["ttft_p50"], colour),
                 _line(f"{line['name']} p95", times, line["ttft_p95"], colour, "dot")]  # fmt: skip
        gaps += [_line(f"{line['name']} p50", times, line["inter_token_p50"], colour),
                 _line(f"{line['name']} mean", times, line["inter_token_mean"], colour, "dot")]  # fmt: skip
        speed.append(_line(line["name"], times, line["tokens_per_second"], colour))
    return {
        "ttft": {"data": ttft, "layout": _layout("Time to first token", "ms", time_axis=True, log_scale=True)},
        "inter_token": {"data": gaps, "layout": _layout("Inter-token latency", "ms", time_axis=True, log_scale=True)},
        "output_speed": {"data": speed, "layout": _layout("Output tokens/s per answer", "tokens/s", time_axis=True)},
    }
