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

// Both try-it forms (tensors and texts) show a failure the same way: the message, no stale
// result, the button usable again.
function tryItFailure(errorBox, result, submit) {
  return function (message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    result.hidden = true;
    submit.disabled = false;
  };
}

// Try-it form: posts the inputs to the friendly predict endpoint and shows the outputs.
(function () {
  "use strict";
  const form = document.getElementById("try-it-form");
  if (!form) return;
  const errorBox = document.getElementById("try-it-error");
  const result = document.getElementById("try-it-result");
  const submit = document.getElementById("try-it-submit");

  const fail = tryItFailure(errorBox, result, submit);

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
        // Four significant figures: the page is for reading, the API keeps full precision.
        const rounded = (key, value) => (typeof value === "number" && !Number.isInteger(value) ? Number(value.toPrecision(4)) : value);
        document.getElementById("try-it-outputs").textContent = JSON.stringify(data.outputs, rounded, 1);
        document.getElementById("try-it-labels").textContent = data.labels ? "Predicted: " + data.labels.join(", ") : "";
        document.getElementById("try-it-timing").textContent =
          "v" + data.version + " · " + data.timing.total_ms.toFixed(1) + " ms (compute " + data.timing.compute_ms.toFixed(2) + " ms)";
        result.hidden = false;
        submit.disabled = false;
      })
      .catch((e) => fail("The request failed: " + e.message));
  });
})();

// Try-it form of text models: posts {"inputs": text, "parameters": {"top_k": k}} to the friendly
// endpoint and shows the ranked answers (tokens, labels, entities) or the embedding's size.
(function () {
  "use strict";
  const form = document.getElementById("try-it-text-form");
  if (!form) return;
  const task = form.dataset.task;
  const textBox = document.getElementById("try-it-text");
  const topK = document.getElementById("try-it-top-k");
  const errorBox = document.getElementById("try-it-error");
  const result = document.getElementById("try-it-result");
  const table = document.getElementById("try-it-answers");
  const summary = document.getElementById("try-it-summary");
  const submit = document.getElementById("try-it-submit");

  const fail = tryItFailure(errorBox, result, submit);

  function cell(row, value) {
    const td = document.createElement("td");
    if (value instanceof Node) td.appendChild(value); else td.textContent = value;
    row.appendChild(td);
  }

  function scoreCell(score) {
    const span = document.createElement("span");
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = 1;
    meter.value = score;
    span.appendChild(meter);
    span.appendChild(document.createTextNode(" " + (score * 100).toFixed(1) + " %"));
    span.title = String(score);
    return span;
  }

  // Columns of each task's answers: [heading, value of one answer].
  const COLUMNS = {
    "fill-mask": [["Token", (a) => a.token_str], ["Score", (a) => scoreCell(a.score)], ["Sequence", (a) => a.sequence]],
    "text-classification": [["Label", (a) => a.label], ["Score", (a) => scoreCell(a.score)]],
    "token-classification": [["Entity", (a) => a.entity], ["Word", (a) => a.word],
      ["Characters", (a) => a.start + "–" + a.end], ["Score", (a) => scoreCell(a.score)]],
  };

  function showTable(answers) {
    const columns = COLUMNS[task];
    const head = document.createElement("tr");
    ["#"].concat(columns.map((c) => c[0])).forEach((name) => {
      const th = document.createElement("th");
      th.textContent = name;
      head.appendChild(th);
    });
    table.tHead.replaceChildren(head);
    const rows = answers.map((answer, index) => {
      const row = document.createElement("tr");
      cell(row, String(index + 1));
      columns.forEach((c) => cell(row, c[1](answer)));
      return row;
    });
    table.tBodies[0].replaceChildren(...rows);
    table.hidden = rows.length === 0;
    summary.textContent = rows.length ? "" : "No answers (no entities found).";
  }

  function showEmbedding(vector) {
    table.hidden = true;
    const norm = Math.sqrt(vector.reduce((sum, x) => sum + x * x, 0));
    summary.textContent = "A vector of " + vector.length + " numbers (norm " + norm.toFixed(3) + "); first values: " +
      vector.slice(0, 8).map((x) => x.toFixed(4)).join(", ") + (vector.length > 8 ? ", …" : "");
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    if (!textBox.value.trim()) { fail("Type a text first."); return; }
    const body = { inputs: textBox.value };
    if (topK) {
      const k = Number(topK.value);
      if (!Number.isInteger(k) || k < 1 || k > Number(topK.max)) { fail("top_k must be a whole number from 1 to " + topK.max + "."); return; }
      body.parameters = { top_k: k };
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
      body: JSON.stringify(body),
    })
      .then((response) => response.json().then((data) => ({ ok: response.ok, status: response.status, data: data })))
      .then(({ ok, status, data }) => {
        if (!ok) { fail(data.error || "Prediction failed with HTTP " + status + "."); return; }
        if (task === "feature-extraction") showEmbedding(data.outputs); else showTable(data.outputs);
        const tokens = data.usage && data.usage.tokens ? " · " + data.usage.tokens + " tokens" : "";
        document.getElementById("try-it-timing").textContent = "v" + data.version + " · " +
          data.timing.total_ms.toFixed(1) + " ms (compute " + data.timing.compute_ms.toFixed(2) + " ms)" + tokens;
        result.hidden = false;
        submit.disabled = false;
      })
      .catch((e) => fail("The request failed: " + e.message));
  });

  // Ctrl+Enter (or Cmd+Enter) in the text box predicts, as Enter alone starts a new line.
  textBox.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
})();
