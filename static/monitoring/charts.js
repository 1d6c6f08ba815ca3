// Monitoring charts: draws the plotly figures a page embeds (json_script "figures") or
// fetches (data-figures-url on a container, re-fetched every data-refresh seconds).
// Each chart is an element with data-figure="<key>"; it gets data-has-data once drawn with points.
// First view: every chart is drawn at once as a plain SVG sketch (static/monitoring/sketch.js,
// data-drawn="sketch"); only then does plotly (preloaded by templates/monitoring/_charts_head.html,
// about a second of parsing on a small machine) run and replace the sketches with interactive
// charts, those on screen first and the others one at a time. Performance marks "charts-visible"
// (the charts on screen are shown) and "charts-drawn" (all are plotly's; also
// <html data-charts-drawn>) tell scripts/page_timings.py and the browser tests when.
(function () {
  "use strict";
  const config = { displaylogo: false, responsive: true };

  // Three significant figures: "0.364", not "0.3644".
  function sig(value) {
    return value === null || value === undefined ? "—" : String(Number(Number(value).toPrecision(3)));
  }

  function hasData(figure) {
    return (figure.data || []).some((trace) => {
      const values = trace.type === "heatmap" ? trace.z : trace.y;
      return (values || []).some((v) => v !== null && v !== 0);
    });
  }

  const plotlySource = document.currentScript && document.currentScript.dataset.plotly;
  let plotly = null;

  // plotly runs once the sketches are painted: its parsing would otherwise hold them back.
  function loadPlotly() {
    if (!plotly) {
      plotly = new Promise((resolve, reject) => {
        requestAnimationFrame(() => setTimeout(() => {
          const script = document.createElement("script");
          script.src = plotlySource;
          script.addEventListener("load", () => resolve(window.Plotly));
          script.addEventListener("error", reject);
          document.head.appendChild(script);
        }, 0));
      });
    }
    return plotly;
  }

  function mark(name) {
    if (!performance.getEntriesByName(name).length) performance.mark(name);
  }

  function onScreen(el) {
    const box = el.getBoundingClientRect();
    return box.top < window.innerHeight && box.bottom > 0;
  }

  function drawOne(el, figure, sketch) {
    const filled = hasData(figure);
    el.dataset.hasData = filled ? "true" : "false";
    const empty = el.parentElement.querySelector(".chart-empty[data-for='" + el.dataset.figure + "']");
    if (empty) empty.hidden = filled;
    if (!filled) {
      // No axes around nothing: the chart's title over its "no data" line, and no plotly work.
      if (el.dataset.drawn === "plotly") window.Plotly.purge(el);
      const title = document.createElement("p");
      title.className = "chart-title";
      const text = figure.layout && figure.layout.title;
      title.textContent = (text && text.text) || text || "";
      el.replaceChildren(title);
      el.dataset.drawn = "empty";
      return Promise.resolve();
    }
    if (sketch) {
      if (window.chartSketch(el, figure)) el.dataset.drawn = "sketch";
      return Promise.resolve();
    }
    if (el.dataset.drawn === "empty" || el.dataset.drawn === "sketch") el.replaceChildren();
    el.dataset.drawn = "plotly";
    return window.Plotly.react(el, figure.data, figure.layout, config);
  }

  function charts(root, figures) {
    return Array.from(root.querySelectorAll("[data-figure]")).filter((el) => figures[el.dataset.figure]);
  }

  // Sketches of every chart, at once (a few milliseconds); none once plotly is there.
  function sketch(root, figures) {
    if (window.Plotly) return;
    charts(root, figures).forEach((el) => drawOne(el, figures[el.dataset.figure], true));
    mark("charts-visible");
  }

  function draw(root, figures) {
    const all = charts(root, figures);
    const first = all.filter(onScreen);
    const later = all.filter((el) => !first.includes(el));
    return Promise.all(first.map((el) => drawOne(el, figures[el.dataset.figure]))).then(() => {
      mark("charts-visible");
      // One chart per task: the page stays responsive while the ones below the fold are drawn.
      return later.reduce((done, el) => done.then(() => new Promise((resolve) => {
        setTimeout(() => Promise.resolve(drawOne(el, figures[el.dataset.figure])).then(resolve), 0);
      })), Promise.resolve());
    }).then(() => {
      mark("charts-drawn");
      document.documentElement.dataset.chartsDrawn = "true";
    });
  }

  // Without plotly (blocked, or failed to load) the sketches stay.
  function show(root, figures) {
    sketch(root, figures);
    return loadPlotly().then(() => draw(root, figures), () => {});
  }

  function follow(root) {
    const select = root.querySelector("select[name=window]");
    const refresh = Number(root.dataset.refresh || 0) * 1000;
    let timer = null;
    function shown(body) {
      const totals = root.querySelector("[data-totals]");
      if (totals && body.totals) {
        const t = body.totals;
        totals.textContent = t.count + " requests, " + t.errors + " errors, p50 " + sig(t.latency_ms.p50) +
          " ms, p95 " + sig(t.latency_ms.p95) + " ms, p99 " + sig(t.latency_ms.p99) + " ms";
      }
      return show(root, body.figures);
    }
    function again() {
      if (refresh) { clearTimeout(timer); timer = setTimeout(load, refresh); }
    }
    function load() {
      const url = new URL(root.dataset.figuresUrl, window.location.href);
      if (select) url.searchParams.set("window", select.value);
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then(shown)
        .catch(() => {})
        .finally(again);
    }
    if (select) select.addEventListener("change", load);
    // The first figures may come with the page (data-initial: a json_script's id).
    const initial = root.dataset.initial && document.getElementById(root.dataset.initial);
    if (initial) {
      shown(JSON.parse(initial.textContent));
      again();
    } else {
      load();
    }
  }

  // Nothing to wait for when no chart is on the first screen (the model page's are further down).
  if (!Array.from(document.querySelectorAll("[data-figure]")).some(onScreen)) mark("charts-visible");
  document.querySelectorAll("[data-figures-url]").forEach(follow);
  const embedded = document.getElementById("figures");
  if (embedded) show(document, JSON.parse(embedded.textContent));
})();
