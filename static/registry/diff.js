// Version comparison: "Differences only" hides the rows where the versions agree, in place.
// Without JavaScript the checkbox is a query parameter (?only=differences) of the same form.
(function () {
  "use strict";
  const toggle = document.getElementById("diff-only");
  const table = document.getElementById("version-diff");
  if (!toggle || !table) return;

  function apply() {
    const only = toggle.checked;
    table.querySelectorAll("tbody[data-section]").forEach(function (section) {
      let shown = 0;
      section.querySelectorAll("tr[data-differs]").forEach(function (row) {
        row.hidden = only && row.dataset.differs !== "true";
        if (!row.hidden) shown += 1;
      });
      section.hidden = shown === 0;
    });
    // Keep the address in step, so a reload or a shared link shows the same rows.
    const url = new URL(window.location.href);
    if (only) url.searchParams.set("only", "differences"); else url.searchParams.delete("only");
    window.history.replaceState(null, "", url);
  }

  toggle.addEventListener("change", apply);
})();
