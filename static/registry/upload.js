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

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    errorBox.hidden = true;
    const source = new FormData(form);
    const body = new FormData();
    for (const [key, value] of source.entries()) {
      if (key === "csrfmiddlewaretoken" || value === "" || (value instanceof File && value.name === "" && value.size === 0)) continue;
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
