// The console's only script: a table with `data-refresh` gets its rows again every
// second (the live sessions), unless a control inside it has the focus.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const table of document.querySelectorAll("table[data-refresh]")) {
    const url = table.dataset.refresh;
    setInterval(async () => {
      if (table.contains(document.activeElement)) return;
      const r = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (!r.ok) return;
      const html = await r.text();
      const body = new DOMParser().parseFromString(`<table>${html}</table>`, "text/html").querySelector("tbody");
      const old = table.querySelector("tbody");
      if (body && old) old.replaceWith(body);
    }, 1000);
  }
});
