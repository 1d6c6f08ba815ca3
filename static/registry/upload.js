// Upload page: sends the form to the REST API with XMLHttpRequest so the browser can show
// upload progress. Without JavaScript the same form posts to the page itself.
(function () {
  "use strict";
  const form = document.getElementById("upload-form");
  if (!form) return;
  const progress = document.getElementById("upload-progress");
  const percent = document.getElementById("upload-percent");
  const errorBox = document.getElementById("upload-error");
  const submit = document.getElementById("upload-submit");

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    submit.disabled = false;
  }

  // The source fields travel as one JSON object, as the API takes them: key=value lines first,
  // then the named fields (data-source-key) over them, the same order as the form's source().
  function sourceObject() {
    const result = {};
    form.querySelectorAll("[data-source-lines]").forEach(function (area) {
      area.value.split(/\r?\n/).forEach(function (line, index) {
        if (!line.trim()) return;
        const at = line.indexOf("=");
        if (at < 1 || !line.slice(0, at).trim()) {
          throw new Error("Source line " + (index + 1) + " is not key=value: '" + line.trim().slice(0, 80) + "'.");
        }
        result[line.slice(0, at).trim()] = line.slice(at + 1).trim();
      });
    });
    form.querySelectorAll("[data-source-key]").forEach(function (input) {
      if (input.value.trim()) result[input.dataset.sourceKey] = input.value.trim();
    });
    return result;
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    const source = new FormData(form);
    const body = new FormData();
    let provenance;
    try { provenance = sourceObject(); } catch (e) { showError(e.message); return; }
    if (Object.keys(provenance).length) body.append("source", JSON.stringify(provenance));
    for (const [key, value] of source.entries()) {
      if (key === "csrfmiddlewaretoken" || key.startsWith("source_") || value === "" || (value instanceof File && value.name === "" && value.size === 0)) continue;
      if (key === "labels") {
        body.append(key, JSON.stringify(value.split(",").map((s) => s.trim()).filter(Boolean)));
      } else {
        body.append(key, value);
      }
    }
    if (!body.has("file")) { showError("Choose a model file to upload."); return; }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.dataset.apiUrl);
    xhr.setRequestHeader("X-CSRFToken", source.get("csrfmiddlewaretoken"));
    xhr.setRequestHeader("Accept", "application/json");
    form.querySelector(".progress-wrap").hidden = false;
    submit.disabled = true;
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      const value = Math.round((e.loaded / e.total) * 100);
      progress.value = value;
      percent.textContent = value + "%";
    });
    xhr.addEventListener("load", function () {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
      if (xhr.status === 201) {
        window.location.href = form.dataset.modelUrl + "versions/" + data.version + "/";
      } else {
        showError(data.error || ("Upload failed with HTTP " + xhr.status + "."));
      }
    });
    xhr.addEventListener("error", function () { showError("The upload was interrupted (network error)."); });
    xhr.send(body);
  });
})();
