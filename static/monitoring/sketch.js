// Chart sketches: a plain SVG drawing of a plotly figure, shown as soon as the page has its
// figures. plotly.js (1.5 MB) takes most of a second to parse and run on a small machine; the
// sketch takes a few milliseconds, and plotly replaces it with the interactive chart once loaded
// (static/monitoring/charts.js). It draws only what monitoring/charts.py builds: lines with
// markers over time, grouped bars over categories and a heatmap with its numbers, with the same
// size, margins, colours, titles and tick formats, so the swap does not move the page.
window.chartSketch = (function () {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const FONT = '"Open Sans", verdana, arial, sans-serif';
  const INK = "#444";
  const GRID = "#eee";

  function add(parent, name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
    if (text !== undefined) el.textContent = text;
    parent.appendChild(el);
    return el;
  }

  function titleOf(title) {
    return (title && title.text) || (typeof title === "string" ? title : "");
  }

  // The tick formats the figures use: ".0%" (shares) and ".3~g" (three significant figures).
  function formatter(tickformat) {
    if (tickformat && tickformat.endsWith("%")) {
      const digits = Number(tickformat.replace(/[^0-9]/g, "") || 0);
      return (v) => (v * 100).toFixed(digits) + "%";
    }
    return (v) => String(Number(Number(v).toPrecision(3)));
  }

  // About `count` round steps (1, 2 or 5 times a power of ten) from lo to hi.
  function niceTicks(lo, hi, count) {
    const raw = (hi - lo) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const ticks = [];
    // Up to the first tick at or above hi, which tops the axis (as plotly's rounded range does).
    for (let v = Math.ceil(lo / step) * step; ticks.length === 0 || ticks[ticks.length - 1] < hi - step * 1e-9; v += step) {
      ticks.push(Number(v.toPrecision(12)));
    }
    return { ticks, top: ticks[ticks.length - 1] };
  }

  // The portal sends UTC ISO times; like plotly, show their wall-clock time as written.
  function timeOf(text) {
    return Date.parse(String(text).slice(0, 19) + "Z");
  }

  function isTimeAxis(values) {
    return values.length > 0 && typeof values[0] === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(values[0]);
  }

  function clock(ms) {
    const d = new Date(ms);
    const pad = (n) => String(n).padStart(2, "0");
    return pad(d.getUTCHours()) + ":" + pad(d.getUTCMinutes());
  }

  function day(ms) {
    return new Date(ms).toLocaleDateString("en-US", { month: "short", day: "numeric", year: "numeric", timeZone: "UTC" });
  }

  function frame(el, figure) {
    const layout = figure.layout || {};
    const margin = Object.assign({ l: 55, r: 15, t: 40, b: 40 }, layout.margin || {});
    // plotly's automargin widens the left margin to fit category labels (the heatmap's rows).
    if ((layout.yaxis || {}).automargin) {
      const labels = (figure.data || []).flatMap((t) => (t.type === "heatmap" ? t.y || [] : []));
      margin.l = Math.max(margin.l, 34 + 7 * Math.max(0, ...labels.map((l) => String(l).length)));
    }
    const width = Math.max(el.clientWidth || 0, 200);
    const height = layout.height || 280;
    const legend = (figure.data || []).filter((t) => t.type !== "heatmap" && t.name).length > 1;
    const box = { left: margin.l, top: margin.t, right: width - margin.r, bottom: height - margin.b - (legend ? 24 : 0) };
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart-sketch");
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", titleOf(layout.title));
    svg.style.fontFamily = FONT;
    add(svg, "text", { x: width * 0.02, y: 24, "font-size": 14, fill: INK }, titleOf(layout.title));
    const yTitle = titleOf((layout.yaxis || {}).title);
    if (yTitle) {
      const y = (box.top + box.bottom) / 2;
      add(svg, "text", { x: 14, y, "font-size": 12, fill: INK, "text-anchor": "middle", transform: `rotate(-90 14 ${y})` }, yTitle);
    }
    const xTitle = titleOf((layout.xaxis || {}).title);
    if (xTitle) add(svg, "text", { x: (box.left + box.right) / 2, y: box.bottom + 34, "font-size": 12, fill: INK, "text-anchor": "middle" }, xTitle);
    return { svg, box, width, height, legend };
  }

  // The y axis of numeric charts: gridlines and tick labels; returns value -> pixel.
  function valueAxis(svg, box, values, yaxis) {
    const finite = values.filter((v) => v !== null && v !== undefined && Number.isFinite(Number(v))).map(Number);
    const lo = Math.min(0, ...finite);
    let hi = Math.max(0, ...finite);
    if (hi === lo) hi = lo + 1;
    const { ticks, top } = niceTicks(lo, hi, 5);
    const y = (v) => box.bottom - ((v - lo) / (top - lo)) * (box.bottom - box.top);
    const label = formatter(yaxis.tickformat);
    for (const tick of ticks) {
      add(svg, "line", { x1: box.left, x2: box.right, y1: y(tick), y2: y(tick), stroke: tick === 0 ? "#bbb" : GRID });
      add(svg, "text", { x: box.left - 6, y: y(tick) + 4, "font-size": 12, fill: INK, "text-anchor": "end" }, label(tick));
    }
    return y;
  }

  function legendRow(parts, traces, colourOf) {
    const { svg, box } = parts;
    let x = box.left;
    const y = parts.height - 6;
    for (const trace of traces) {
      add(svg, "rect", { x, y: y - 8, width: 14, height: 4, fill: colourOf(trace) });
      const text = add(svg, "text", { x: x + 18, y: y - 3, "font-size": 12, fill: INK }, trace.name);
      x += 30 + 7 * String(trace.name).length;
      if (x > box.right) text.remove();
    }
  }

  function lines(figure, parts) {
    const { svg, box } = parts;
    const traces = figure.data;
    const xs = traces[0].x || [];
    const timed = isTimeAxis(xs);
    const positions = xs.map((x, i) => (timed ? timeOf(x) : i));
    const first = Math.min(...positions);
    const last = Math.max(...positions);
    const x = (p) => box.left + (last === first ? 0.5 : (p - first) / (last - first)) * (box.right - box.left);
    const y = valueAxis(svg, box, traces.flatMap((t) => t.y || []), figure.layout.yaxis || {});
    const labels = 5;
    let shownDay = null;
    for (let k = 0; k < labels; k++) {
      const p = first + ((last - first) * k) / (labels - 1);
      const text = timed ? clock(p) : String(xs[Math.round(p)] ?? "");
      add(svg, "text", { x: x(p), y: box.bottom + 16, "font-size": 12, fill: INK, "text-anchor": "middle" }, text);
      // The date under the first time and wherever the day changes, as plotly writes it.
      if (timed && day(p) !== shownDay) {
        shownDay = day(p);
        add(svg, "text", { x: x(p), y: box.bottom + 30, "font-size": 12, fill: INK, "text-anchor": "middle" }, shownDay);
      }
    }
    for (const trace of traces) {
      const colour = (trace.line || {}).color || INK;
      const dash = (trace.line || {}).dash === "dot" ? "2 3" : "";
      let path = "";
      let pen = false;
      (trace.y || []).forEach((v, i) => {
        if (v === null || v === undefined) { pen = false; return; }
        path += (pen ? "L" : "M") + x(positions[i]).toFixed(1) + " " + y(Number(v)).toFixed(1);
        pen = true;
        add(svg, "circle", { cx: x(positions[i]), cy: y(Number(v)), r: 2, fill: colour });
      });
      if (path) add(svg, "path", { d: path, fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": dash });
    }
    if (parts.legend) legendRow(parts, traces, (t) => (t.line || {}).color || INK);
  }

  function bars(figure, parts) {
    const { svg, box } = parts;
    const traces = figure.data;
    const categories = [...new Set(traces.flatMap((t) => (t.x || []).map(String)))];
    const band = (box.right - box.left) / Math.max(categories.length, 1);
    const width = (band * 0.8) / traces.length;
    const y = valueAxis(svg, box, traces.flatMap((t) => t.y || []), figure.layout.yaxis || {});
    categories.forEach((name, i) => {
      add(svg, "text", { x: box.left + band * (i + 0.5), y: box.bottom + 16, "font-size": 12, fill: INK, "text-anchor": "middle" }, name);
    });
    traces.forEach((trace, k) => {
      const colour = (trace.marker || {}).color || INK;
      (trace.x || []).forEach((name, j) => {
        const v = (trace.y || [])[j];
        if (v === null || v === undefined) return;
        const left = box.left + band * (categories.indexOf(String(name)) + 0.1) + width * k;
        const top = Math.min(y(Number(v)), y(0));
        add(svg, "rect", { x: left, y: top, width: Math.max(width - 1, 1), height: Math.abs(y(0) - y(Number(v))), fill: colour });
      });
    });
    if (parts.legend) legendRow(parts, traces, (t) => (t.marker || {}).color || INK);
  }

  function mix(low, high, share) {
    const channel = (hex, i) => parseInt(hex.slice(1 + 2 * i, 3 + 2 * i), 16);
    const rgb = [0, 1, 2].map((i) => Math.round(channel(low, i) + (channel(high, i) - channel(low, i)) * share));
    return { fill: `rgb(${rgb.join(",")})`, dark: rgb[0] * 0.3 + rgb[1] * 0.6 + rgb[2] * 0.1 < 140 };
  }

  function heatmap(figure, parts) {
    const { svg, box } = parts;
    const trace = figure.data[0];
    const rows = trace.z || [];
    const scale = trace.colorscale || [[0, "#ffffff"], [1, "#1e40af"]];
    const top = Math.max(1, ...rows.flat().map(Number).filter(Number.isFinite));
    const reversed = (figure.layout.yaxis || {}).autorange === "reversed";
    const columns = (rows[0] || []).length;
    const right = box.right - 40; // room for plotly's colour bar
    const cellW = (right - box.left) / Math.max(columns, 1);
    const cellH = (box.bottom - box.top) / Math.max(rows.length, 1);
    rows.forEach((row, r) => {
      const top_ = box.top + cellH * (reversed ? r : rows.length - 1 - r);
      add(svg, "text", { x: box.left - 6, y: top_ + cellH / 2 + 4, "font-size": 12, fill: INK, "text-anchor": "end" }, String((trace.y || [])[r] ?? r));
      row.forEach((value, c) => {
        const colour = mix(scale[0][1], scale[scale.length - 1][1], Number(value) / top);
        add(svg, "rect", { x: box.left + cellW * c, y: top_, width: cellW, height: cellH, fill: colour.fill });
        add(svg, "text", { x: box.left + cellW * (c + 0.5), y: top_ + cellH / 2 + 4, "font-size": 12, "text-anchor": "middle",
          fill: colour.dark ? "#fff" : INK }, String(value));
      });
    });
    (trace.x || []).forEach((name, c) => {
      add(svg, "text", { x: box.left + cellW * (c + 0.5), y: box.bottom + 16, "font-size": 12, fill: INK, "text-anchor": "middle" }, String(name));
    });
  }

  // Draws `figure` into `el` (replacing what is there); false for a figure it cannot sketch.
  return function sketch(el, figure) {
    const traces = figure.data || [];
    const kind = traces.length && traces.every((t) => t.type === traces[0].type) ? traces[0].type : null;
    const draw = { scatter: lines, bar: bars, heatmap: heatmap }[kind];
    if (!draw) return false;
    const parts = frame(el, figure);
    draw(figure, parts);
    el.replaceChildren(parts.svg);
    return true;
  };
})();
