// Runs list: refresh the table every 5 s (keeping the ticked runs), filter on change.
"use strict";
(() => {
  const REFRESH_MS = 5000;

  function ticked() {
    return new Set([...document.querySelectorAll("#runs-table input[name=run]:checked")].map((b) => b.value));
  }

  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch(location.href, { headers: { Accept: "text/html" } });
      if (!response.ok) return;
      const doc = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = doc.querySelector("#runs-table tbody");
      const current = document.querySelector("#runs-table tbody");
      if (!fresh || !current) return;
      const keep = ticked();
      current.replaceWith(fresh);
      for (const box of fresh.querySelectorAll("input[name=run]")) box.checked = keep.has(box.value);
    } catch (error) {
      // a server restart: try again on the next tick
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const status = document.getElementById("status-filter");
    if (status) status.addEventListener("change", () => status.form.submit());
    const form = document.getElementById("compare-form");
    form.addEventListener("submit", (event) => {
      if (ticked().size === 0) event.preventDefault();
    });
    setInterval(refresh, REFRESH_MS);
  });
})();
