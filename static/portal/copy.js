// A "Copy" button on every code block (snippets, a new API token): one click, the text is on
// the clipboard. The button says whether it worked.
document.querySelectorAll("pre > code").forEach(function (code) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary copy";
  button.textContent = "Copy";
  button.setAttribute("aria-label", "Copy to the clipboard");
  button.addEventListener("click", function () {
    const done = function (label) { button.textContent = label; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(code.textContent).then(function () { done("Copied"); }, function () { done("Copy failed"); });
      return;
    }
    const range = document.createRange();
    range.selectNodeContents(code);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    done(document.execCommand("copy") ? "Copied" : "Press Ctrl+C");
  });
  code.parentElement.classList.add("has-copy");
  code.parentElement.prepend(button);
});
