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

// Try-it form: posts the inputs to the friendly predict endpoint and shows the outputs.
(function () {
  "use strict";
  const form = document.getElementById("try-it-form");
  if (!form) return;
  const errorBox = document.getElementById("try-it-error");
  const result = document.getElementById("try-it-result");
  const submit = document.getElementById("try-it-submit");

  function fail(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    result.hidden = true;
    submit.disabled = false;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    let inputs;
    try {
      inputs = JSON.parse(document.getElementById("try-it-inputs").value);
    } catch (e) {
      fail("The inputs are not valid JSON: " + e.message);
      return;
    }
    submit.disabled = true;
    fetch(form.dataset.predictUrl, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        "X-CSRFToken": form.querySelector("[name=csrfmiddlewaretoken]").value,
      },
      body: JSON.stringify({ inputs: inputs }),
    })
      .then((response) => response.json().then((data) => ({ ok: response.ok, status: response.status, data: data })))
      .then(({ ok, status, data }) => {
        if (!ok) { fail(data.error || "Prediction failed with HTTP " + status + "."); return; }
        document.getElementById("try-it-outputs").textContent = JSON.stringify(data.outputs, null, 1);
        document.getElementById("try-it-labels").textContent = data.labels ? "Predicted: " + data.labels.join(", ") : "";
        document.getElementById("try-it-timing").textContent =
          "v" + data.version + " · " + data.timing.total_ms.toFixed(1) + " ms (compute " + data.timing.compute_ms.toFixed(2) + " ms)";
        result.hidden = false;
        submit.disabled = false;
      })
      .catch((e) => fail("The request failed: " + e.message));
  });
})();
