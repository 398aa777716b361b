// The dashboard's one script: it re-fetches the server-rendered region of the page every
// few seconds and swaps it in (no reload), and keeps the token for this tab's session.
"use strict";
(() => {
  const live = document.getElementById("live");
  const updated = document.getElementById("updated");
  if (live) {
    const every = Number(live.dataset.interval) || 2000;
    const tick = async () => {
      try {
        const response = await fetch(live.dataset.src, { cache: "no-store" });
        if (response.ok) {
          live.innerHTML = await response.text();
          document.body.classList.remove("stale");
          if (updated) updated.textContent = "live, " + new Date().toLocaleTimeString();
        } else {
          document.body.classList.add("stale");
          if (updated) updated.textContent = "storage unreachable (" + response.status + ")";
        }
      } catch (error) {
        document.body.classList.add("stale");
        if (updated) updated.textContent = "dashboard unreachable";
      }
      setTimeout(tick, every);
    };
    setTimeout(tick, every);
  }
  for (const control of document.querySelectorAll("form.control")) {
    const token = control.elements.token;
    token.value = sessionStorage.getItem("circuitpy-token") || "";
    control.addEventListener("submit", () => {
      if (token.value) sessionStorage.setItem("circuitpy-token", token.value);
    });
  }
})();
