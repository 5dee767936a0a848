// Typing a custom date picks the "custom period" choice, so what is typed is what is previewed.
// The Report button is disabled once pressed (the server, too, starts one run per preview).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const confirm = document.getElementById("confirm-form");
  if (confirm) {
    confirm.addEventListener("submit", () => {
      document.getElementById("report-button").disabled = true;
    });
  }
  const custom = document.querySelector('input[name="preset"][value="custom"]');
  for (const name of ["start", "end"]) {
    const input = document.querySelector(`input[name="${name}"]`);
    if (custom && input) {
      input.addEventListener("input", () => { custom.checked = true; });
    }
  }
});
