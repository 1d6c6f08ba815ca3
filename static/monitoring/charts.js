// Monitoring charts: draws the plotly figures a page embeds (json_script "figures") or
// fetches (data-figures-url on a container, re-fetched every data-refresh seconds).
// Each chart is an element with data-figure="<key>"; it gets data-has-data once drawn with points.
// plotly loads async (templates/monitoring/_charts_head.html): the page shows before it, the
// figures are fetched while it loads, the charts on screen are drawn first and the others one
// at a time after them. Performance marks "charts-visible" and "charts-drawn" (and
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

  const plotly = new Promise((resolve) => {
    if (window.Plotly) return resolve(window.Plotly);
    const script = document.querySelector("script[data-plotly]");
    if (script) script.addEventListener("load", () => resolve(window.Plotly));
  });

  function mark(name) {
    if (!performance.getEntriesByName(name).length) performance.mark(name);
  }

  function onScreen(el) {
    const box = el.getBoundingClientRect();
    return box.top < window.innerHeight && box.bottom > 0;
  }

  function drawOne(el, figure) {
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
    if (el.dataset.drawn === "empty") el.replaceChildren();
    el.dataset.drawn = "plotly";
    return window.Plotly.react(el, figure.data, figure.layout, config);
  }

  function draw(root, figures) {
    const charts = Array.from(root.querySelectorAll("[data-figure]")).filter((el) => figures[el.dataset.figure]);
    const first = charts.filter(onScreen);
    const later = charts.filter((el) => !first.includes(el));
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

  function follow(root) {
    const select = root.querySelector("select[name=window]");
    const refresh = Number(root.dataset.refresh || 0) * 1000;
    let timer = null;
    function load() {
      const url = new URL(root.dataset.figuresUrl, window.location.href);
      if (select) url.searchParams.set("window", select.value);
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then((body) => {
          const totals = root.querySelector("[data-totals]");
          if (totals && body.totals) {
            const t = body.totals;
            totals.textContent = t.count + " requests, " + t.errors + " errors, p50 " + sig(t.latency_ms.p50) +
              " ms, p95 " + sig(t.latency_ms.p95) + " ms, p99 " + sig(t.latency_ms.p99) + " ms";
          }
          return plotly.then(() => draw(root, body.figures));
        })
        .catch(() => {})
        .finally(() => { if (refresh) { clearTimeout(timer); timer = setTimeout(load, refresh); } });
    }
    if (select) select.addEventListener("change", load);
    load();
  }

  // Nothing to wait for when no chart is on the first screen (the model page's are further down).
  if (!Array.from(document.querySelectorAll("[data-figure]")).some(onScreen)) mark("charts-visible");
  document.querySelectorAll("[data-figures-url]").forEach(follow);
  const embedded = document.getElementById("figures");
  if (embedded) plotly.then(() => draw(document, JSON.parse(embedded.textContent)));
})();
