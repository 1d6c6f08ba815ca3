// Jobs pages: every progress bar of a queued or running job polls the API once a second
// and follows the job; the job page reloads when its job settles (download link, error).
(function () {
  "use strict";
  const active = new Set(["queued", "running"]);

  function follow(box) {
    const bar = box.querySelector("progress");
    const percent = box.querySelector(".job-percent");
    const badge = box.querySelector(".status");
    const rows = document.getElementById("job-rows");
    let failures = 0;

    function show(job) {
      bar.value = job.progress;
      percent.textContent = job.progress.toFixed(1) + "%";
      badge.textContent = job.status;
      badge.className = "status status-" + job.status;
      badge.dataset.status = job.status;
      box.dataset.status = job.status;
      if (rows) rows.textContent = job.rows_done + " of " + job.total_rows + " rows";
    }

    function poll() {
      fetch(box.dataset.jobApi, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : Promise.reject(r.status)))
        .then((job) => {
          failures = 0;
          show(job);
          if (active.has(job.status)) { setTimeout(poll, 1000); return; }
          if (box.dataset.reload === "true") window.location.reload();
        })
        .catch(() => { failures += 1; setTimeout(poll, Math.min(1000 * 2 ** failures, 15000)); });
    }

    setTimeout(poll, 1000);
  }

  document.querySelectorAll("[data-job-api]").forEach((box) => {
    if (active.has(box.dataset.status)) follow(box);
  });
})();
