// Monitoring charts: draws the plotly figures a page embeds (json_script "figures") or
// fetches (data-figures-url on a container, re-fetched every data-refresh seconds).
// Each chart is an element with data-figure="<key>"; it gets data-has-data once drawn with points.
// Once the first figures are drawn the page gets a "charts-drawn" performance mark and
// <html data-charts-drawn> (scripts/page_timings.py and the browser tests wait for them).
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

  function drawn() {
    if (!performance.getEntriesByName("charts-drawn").length) performance.mark("charts-drawn");
    document.documentElement.dataset.chartsDrawn = "true";
  }

  function draw(root, figures) {
    const pending = [];
    root.querySelectorAll("[data-figure]").forEach((el) => {
      const figure = figures[el.dataset.figure];
      if (!figure) return;
      const filled = hasData(figure);
      el.dataset.hasData = filled ? "true" : "false";
      const empty = el.parentElement.querySelector(".chart-empty[data-for='" + el.dataset.figure + "']");
      if (empty) empty.hidden = filled;
      pending.push(window.Plotly.react(el, figure.data, figure.layout, config));
    });
    return Promise.all(pending).then(drawn);
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
          draw(root, body.figures);
          const totals = root.querySelector("[data-totals]");
          if (totals && body.totals) {
            const t = body.totals;
            totals.textContent = t.count + " requests, " + t.errors + " errors, p50 " + sig(t.latency_ms.p50) +
              " ms, p95 " + sig(t.latency_ms.p95) + " ms, p99 " + sig(t.latency_ms.p99) + " ms";
          }
        })
        .catch(() => {})
        .finally(() => { if (refresh) { clearTimeout(timer); timer = setTimeout(load, refresh); } });
    }
    if (select) select.addEventListener("change", load);
    load();
  }

  document.querySelectorAll("[data-figures-url]").forEach(follow);
  const embedded = document.getElementById("figures");
  if (embedded) draw(document, JSON.parse(embedded.textContent));
})();
