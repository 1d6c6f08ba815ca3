// Version page: while validation runs, poll the API and reload once the status settles.
(function () {
  "use strict";
  const box = document.getElementById("version-status");
  if (!box || box.dataset.settled === "true") return;
  const settled = new Set(["ready", "failed", "archived"]);
  let delay = 500;
  function poll() {
    fetch(box.dataset.apiUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then((r) => (r.ok ? r.json() : null))
      .then((data) => {
        if (data && settled.has(data.status)) { window.location.reload(); return; }
        delay = Math.min(delay * 1.5, 5000);
        setTimeout(poll, delay);
      })
      .catch(() => setTimeout(poll, 5000));
  }
  setTimeout(poll, delay);
})();
