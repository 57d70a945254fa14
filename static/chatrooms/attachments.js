// Text files attached to the next message: upload each over HTTP, show it as a removable chip, and
// put the uploads' ids in the `chat.send` frame that chat.js sends (its "chat:send" event).
(() => {
  "use strict";
  const composer = document.getElementById("composer");
  const input = document.getElementById("attach-input");
  const button = document.getElementById("attach");
  const chips = document.getElementById("attachment-chips");
  const formError = document.getElementById("form-error");
  if (!composer || !input || !button || !chips) return;

  const MAX_FILES = 5; // chatrooms.attachments.ATTACHMENTS_PER_MESSAGE
  const uploadUrl = input.dataset.uploadUrl;

  // The CSRF token htmx sends (base.html's hx-headers), for our own fetches.
  function csrfHeaders() {
    try {
      return JSON.parse(document.body.getAttribute("hx-headers") || "{}");
    } catch {
      return {};
    }
  }

  function showError(text) {
    if (formError) formError.textContent = text;
  }

  function readableSize(bytes) {
    if (bytes < 1024) return `${bytes} B`;
    return `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KB`;
  }

  const allChips = () => [...chips.querySelectorAll("li.attachment-chip")];

  function updateList() {
    chips.hidden = allChips().length === 0;
  }

  function chipFor(file) {
    const chip = document.createElement("li");
    chip.className = "attachment-chip uploading";
    const name = document.createElement("span");
    name.className = "chip-name";
    name.textContent = file.name;
    const detail = document.createElement("span");
    detail.className = "chip-detail";
    detail.textContent = "uploading…";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "link chip-remove";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `Remove ${file.name}`);
    remove.addEventListener("click", () => removeChip(chip));
    chip.append(name, " ", detail, " ", remove);
    return chip;
  }

  // The upload stays on the server until it is sent or a day old; tell the server it is not wanted.
  function removeChip(chip) {
    const id = chip.dataset.attachmentId;
    if (id) fetch(`/attachments/${id}/`, { method: "DELETE", headers: csrfHeaders(), credentials: "same-origin" });
    chip.remove();
    updateList();
    button.focus();
  }

  async function upload(file) {
    const chip = chipFor(file);
    chips.append(chip);
    updateList();
    const body = new FormData();
    body.append("file", file);
    let answer = null;
    let status = 0;
    try {
      const response = await fetch(uploadUrl, { method: "POST", body, headers: csrfHeaders(), credentials: "same-origin" });
      status = response.status;
      answer = await response.json().catch(() => null);
    } catch {
      answer = null;
    }
    if (!chip.isConnected) return; // removed while it uploaded
    if (status !== 201 || !answer || !answer.id) {
      chip.remove();
      updateList();
      showError(answer && answer.error ? answer.error : `${file.name} could not be attached; try again.`);
      return;
    }
    chip.classList.remove("uploading");
    chip.dataset.attachmentId = answer.id;
    chip.querySelector(".chip-name").textContent = answer.filename;
    chip.querySelector(".chip-detail").textContent = readableSize(answer.size);
    chip.querySelector(".chip-remove").setAttribute("aria-label", `Remove ${answer.filename}`);
  }

  button.hidden = false;
  button.addEventListener("click", () => input.click());

  input.addEventListener("change", () => {
    const files = [...input.files];
    input.value = ""; // the same file can be picked again
    const room = MAX_FILES - allChips().length;
    if (files.length > room) showError(`A message may attach at most ${MAX_FILES} files.`);
    else showError("");
    for (const file of files.slice(0, Math.max(0, room))) upload(file);
  });

  composer.addEventListener("chat:send", (event) => {
    const current = allChips();
    if (current.some((chip) => chip.classList.contains("uploading"))) {
      event.preventDefault();
      showError("Wait a moment: a file is still uploading.");
      return;
    }
    if (current.length) event.detail.attachments = current.map((chip) => chip.dataset.attachmentId);
  });

  composer.addEventListener("chat:sent", (event) => {
    if (!event.detail.attachments) return;
    for (const chip of allChips()) chip.remove();
    updateList();
  });
})();
