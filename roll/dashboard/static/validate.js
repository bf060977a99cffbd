// Validate page: read a file into the text box, POST the text with the token, show the verdict.
"use strict";
(() => {
  document.addEventListener("DOMContentLoaded", () => {
    const text = document.getElementById("job-text");
    const result = document.getElementById("validate-result");
    document.getElementById("job-file").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (file) text.value = await file.text();
    });
    document.getElementById("validate-button").addEventListener("click", async () => {
      if (!roll.token()) {
        result.className = "result bad";
        result.textContent = "Set the token first (top right): `roll dashboard` printed it.";
        return;
      }
      result.className = "result";
      result.textContent = "validating…";
      const { status, data } = await roll.post("/api/jobs/validate", text.value, "text/plain; charset=utf-8");
      if (status === 200 && data.ok) {
        result.className = "result good";
        result.textContent = `${data.message}\n\n${data.plan_text}`;
      } else {
        result.className = "result bad";
        result.textContent = `error: ${data.error || data.detail || status}`;
      }
    });
  });
})();
