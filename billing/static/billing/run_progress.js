// While a report run works, poll its counters every two seconds; reload once it has finished so
// the page shows its errors and report log rows.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const panel = document.getElementById("run-progress");
  if (!panel || panel.dataset.running !== "true") {
    return;
  }
  const url = panel.dataset.progressUrl;
  const poll = async () => {
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) {
        const progress = await response.json();
        for (const element of panel.querySelectorAll("[data-field]")) {
          element.textContent = progress[element.dataset.field];
        }
        if (!progress.running) {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // A dropped request is retried on the next tick.
    }
    window.setTimeout(poll, 2000);
  };
  window.setTimeout(poll, 1000);
});
