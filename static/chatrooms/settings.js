// The settings page: a new token's field selects itself on focus, ready to copy (no inline handler:
// the Content-Security-Policy runs no inline script).
"use strict";
document.querySelectorAll("[data-select-on-focus]").forEach((field) => {
  field.addEventListener("focus", () => field.select());
});
