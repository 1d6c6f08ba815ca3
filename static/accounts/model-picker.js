// The token form's "Only models" list: a filter box over its checkboxes and a count of what is
// ticked. Without JavaScript the checkboxes work as they are.
(function () {
  "use strict";
  const picker = document.getElementById("model-picker");
  if (!picker) return;
  const filter = document.getElementById("model-picker-filter");
  const summary = document.getElementById("model-picker-summary");
  const boxes = Array.from(picker.querySelectorAll('input[type="checkbox"][name="models"]'));
  if (!boxes.length) return;
  filter.hidden = false;

  function summarise() {
    const ticked = boxes.filter((box) => box.checked).map((box) => box.value);
    summary.textContent = ticked.length
      ? "(" + ticked.length + " ticked: " + ticked.join(", ") + ")"
      : "(none ticked: every model you can use)";
  }

  filter.addEventListener("input", () => {
    const wanted = filter.value.trim().toLowerCase();
    boxes.forEach((box) => {
      // Ticked models stay in view, so what the token will allow is always visible.
      box.closest("label").hidden = Boolean(wanted) && !box.checked && !box.value.toLowerCase().includes(wanted);
    });
  });
  // Enter in the filter must not submit the form.
  filter.addEventListener("keydown", (event) => {
    if (event.key === "Enter") event.preventDefault();
  });
  boxes.forEach((box) => box.addEventListener("change", summarise));
  summarise();
})();
