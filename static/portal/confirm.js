// Forms that destroy something ask first: <form data-confirm="Delete …?">. A static script
// because the Content-Security-Policy (script-src 'self') blocks inline onsubmit handlers.
document.querySelectorAll("form[data-confirm]").forEach(function (form) {
  form.addEventListener("submit", function (event) {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
});
