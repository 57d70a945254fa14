// The page's client of the chat protocol (docs/protocol.md): live answers, the room list, reconnects.
// The server renders every stored message; this script only shows what streams, then asks htmx for
// the server's rendering of the finished message.
(() => {
  "use strict";
  const app = document.getElementById("app");
  const roomId = app && app.dataset.roomId;
  if (!roomId) return;

  const messages = document.getElementById("messages");
  const composer = document.getElementById("composer");
  const textarea = document.getElementById("composer-text");
  const sendButton = document.getElementById("send");
  const stopButton = document.getElementById("stop");
  const regenerateButton = document.getElementById("regenerate");
  const connection = document.getElementById("connection");
  const formError = document.getElementById("form-error");
  const roomList = document.getElementById("room-list");

  let socket = null;
  let attempts = 0;
  let retryTimer = null;
  let live = null; // {streamId, requestId, lastIndex, bubble, body, text, tools: Map}

  const requestId = () => (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  const messageUrl = (id) => `/rooms/${roomId}/messages/${id}/`;

  function setConnection(state, label) {
    connection.dataset.state = state;
    connection.textContent = label;
    const usable = state === "online";
    textarea.disabled = !usable;
    sendButton.disabled = !usable || Boolean(live);
    regenerateButton.disabled = !usable || Boolean(live);
  }

  function showError(text) {
    formError.textContent = text;
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  // -- connection -------------------------------------------------------------------------

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/chat/`);
    setConnection("connecting", attempts ? "reconnecting…" : "connecting…");
    socket.addEventListener("open", () => {
      attempts = 0;
      const join = { type: "room.join", roomId };
      if (live) join.since = { streamId: live.streamId, index: live.lastIndex };
      send(join);
    });
    socket.addEventListener("message", (event) => handle(JSON.parse(event.data)));
    socket.addEventListener("close", (event) => {
      if (event.code === 4401 || event.code === 1008) {
        setConnection("offline", "signed out");
        return;
      }
      attempts += 1;
      const delay = Math.min(10000, 500 * 2 ** Math.min(attempts - 1, 5)) * (0.75 + Math.random() / 2);
      setConnection("offline", `offline, retrying in ${Math.round(delay / 1000)}s`);
      retryTimer = setTimeout(connect, delay);
    });
  }

  // The browser knows before the socket does: drop a dead connection at once, and come back as
  // soon as the network does instead of waiting out the backoff.
  window.addEventListener("offline", () => socket && socket.close());
  window.addEventListener("online", () => {
    if (socket && socket.readyState !== WebSocket.CLOSED) return;
    clearTimeout(retryTimer);
    connect();
  });

  // -- frames -----------------------------------------------------------------------------

  function handle(frame) {
    switch (frame.type) {
      case "hello":
        return;
      case "rooms":
        return renderRooms(frame.rooms);
      case "messages":
        if (frame.roomId === roomId) {
          setConnection("online", "connected");
          return reconcile(frame.messages);
        }
        return;
      case "message.created":
      case "message.updated":
        return frame.roomId === roomId && fetchMessage(frame.message.id);
      case "message.removed":
        return frame.roomId === roomId && document.getElementById(`message-${frame.messageId}`)?.remove();
      case "stream.start":
        return startStream(frame.streamId, frame.requestId, frame.messageId, false);
      case "stream.resuming":
        return startStream(frame.streamId, frame.requestId, null, true);
      case "stream.chunk":
        return applyChunk(frame);
      case "stream.replay_complete":
        return;
      case "stream.done":
        return endStream(frame);
      case "room.cleared":
        messages.replaceChildren();
        live = null;
        return setStreaming(false);
      case "room.deleted":
        if (frame.roomId === roomId) location.assign("/");
        return;
      case "error":
        return showError(frame.message);
      default:
        return;
    }
  }

  function renderRooms(rooms) {
    roomList.replaceChildren(
      ...rooms.map((room) => {
        const item = document.createElement("li");
        item.dataset.roomId = room.id;
        if (room.id === roomId) {
          item.className = "current";
          item.setAttribute("aria-current", "page");
          document.getElementById("room-title").textContent = room.name;
          document.title = `${room.name} · Chatrooms`;
        }
        const link = document.createElement("a");
        link.href = `/rooms/${room.id}/`;
        const name = document.createElement("span");
        name.className = "room-name";
        name.textContent = room.name;
        const meta = document.createElement("span");
        meta.className = "room-meta";
        const count = document.createElement("span");
        count.className = "count";
        count.textContent = `${room.messageCount} msg`;
        const marker = document.createElement("span");
        marker.className = "streaming-marker";
        marker.title = "Answering";
        marker.textContent = "● live";
        marker.hidden = !room.streaming;
        const active = document.createElement("time");
        active.className = "last-active";
        active.dateTime = room.lastActiveAt;
        active.textContent = shortTime(room.lastActiveAt);
        meta.append(count, " · ", active, " ", marker);
        link.append(name, meta);
        item.append(link);
        return item;
      }),
    );
  }

  // "14:05" today, "3 Nov" before: when a room was last active, in the reader's own time zone.
  function shortTime(iso) {
    const moment = new Date(iso);
    const today = new Date().toDateString() === moment.toDateString();
    return today
      ? moment.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
      : moment.toLocaleDateString([], { day: "numeric", month: "short" });
  }

  for (const element of document.querySelectorAll("time.last-active")) {
    element.textContent = shortTime(element.dateTime);
  }

  // After a (re)connect: fetch what the page lacks, drop what the server no longer has.
  function reconcile(list) {
    const wanted = new Set(list.map((m) => m.id));
    const oldest = list.length ? Number(list[0].id) : -Infinity; // older ones are outside the answer
    for (const element of messages.querySelectorAll("article.message[data-message-id]")) {
      if (!wanted.has(element.dataset.messageId) && Number(element.dataset.messageId) >= oldest) element.remove();
    }
    if (live && live.messageId && wanted.has(String(live.messageId))) {
      // It ended while we were away: the stored message replaces the partial bubble.
      live.bubble.remove();
      live = null;
      setStreaming(false);
    }
    for (const message of list) {
      if (!document.getElementById(`message-${message.id}`)) fetchMessage(message.id);
    }
    enableEditing();
  }

  // The server's rendering of one stored message, put where it belongs (by id order).
  function fetchMessage(id, replace) {
    return fetch(messageUrl(id), { headers: { "HX-Request": "true" } })
      .then((response) => (response.ok ? response.text() : null))
      .then((html) => {
        if (html === null) return;
        const holder = document.createElement("template");
        holder.innerHTML = html.trim();
        const element = holder.content.firstElementChild;
        const existing = replace || document.getElementById(`message-${id}`);
        if (existing) {
          existing.replaceWith(element);
        } else {
          const after = [...messages.querySelectorAll("article.message[data-message-id]")].find(
            (other) => Number(other.dataset.messageId) > Number(id),
          );
          messages.insertBefore(element, after || (live && live.bubble.isConnected ? live.bubble : null));
        }
        if (window.htmx) window.htmx.process(element);
        enableEditing();
        scrollToEnd();
      });
  }

  // -- the live answer --------------------------------------------------------------------

  function startStream(streamId, reqId, messageId, resuming) {
    if (live && live.streamId === streamId) {
      live.resuming = resuming;
      return; // a reconnect: keep what is shown, the server sends only what comes after it
    }
    const bubble = document.createElement("article");
    bubble.className = "message assistant streaming";
    bubble.setAttribute("aria-busy", "true");
    const head = document.createElement("header");
    head.className = "message-head";
    head.innerHTML = '<span class="author">Assistant</span> <span class="badge">answering…</span>';
    const body = document.createElement("div");
    body.className = "message-body live-text";
    bubble.append(head, body);
    messages.append(bubble);
    live = { streamId, requestId: reqId, messageId, lastIndex: -1, bubble, body, text: null, tools: new Map(), resuming };
    setStreaming(true);
    scrollToEnd();
  }

  function applyChunk(frame) {
    if (!live || live.streamId !== frame.streamId || frame.index <= live.lastIndex) return;
    live.lastIndex = frame.index;
    const chunk = frame.chunk;
    switch (chunk.type) {
      case "start":
        live.messageId = chunk.messageId;
        break;
      case "text-start":
        live.text = document.createElement("p");
        live.text.className = "streaming-text";
        live.body.append(live.text);
        break;
      case "text-delta":
        if (!live.text) {
          live.text = document.createElement("p");
          live.text.className = "streaming-text";
          live.body.append(live.text);
        }
        live.text.append(document.createTextNode(chunk.delta)); // text, never markup
        break;
      case "text-end":
        live.text = null;
        break;
      case "tool-input-start":
      case "tool-input-available":
      case "tool-output-available":
      case "tool-output-error":
      case "tool-output-denied":
        toolCard(chunk);
        break;
      case "error":
        showError(chunk.errorText);
        break;
      default:
        break;
    }
    scrollToEnd();
  }

  function toolCard(chunk) {
    let card = live.tools.get(chunk.toolCallId);
    if (!card) {
      card = document.createElement("details");
      card.className = "tool-card";
      const summary = document.createElement("summary");
      const name = document.createElement("span");
      name.className = "tool-name";
      name.textContent = chunk.toolName || "tool";
      const state = document.createElement("span");
      state.className = "tool-state";
      summary.append(name, " ", state);
      const io = document.createElement("pre");
      card.append(summary, io);
      live.body.append(card);
      live.text = null;
      live.tools.set(chunk.toolCallId, card);
    }
    const [state, io] = [card.querySelector(".tool-state"), card.querySelector("pre")];
    if (chunk.type === "tool-input-start") state.textContent = "calling…";
    if (chunk.type === "tool-input-available") {
      state.textContent = "running…";
      io.textContent = JSON.stringify(chunk.input, null, 2);
    }
    if (chunk.type === "tool-output-available") {
      state.textContent = "done";
      io.textContent += "\n→ " + JSON.stringify(chunk.output, null, 2);
    }
    if (chunk.type === "tool-output-error") {
      state.textContent = "failed";
      io.textContent += "\n✗ " + chunk.errorText;
    }
    if (chunk.type === "tool-output-denied") state.textContent = "denied";
  }

  function endStream(frame) {
    if (live && live.streamId === frame.streamId) {
      const bubble = live.bubble;
      live = null;
      setStreaming(false);
      fetchMessage(frame.message.id, bubble);
    } else if (!document.getElementById(`message-${frame.message.id}`)) {
      fetchMessage(frame.message.id);
    }
  }

  function setStreaming(streaming) {
    stopButton.hidden = !streaming;
    const online = connection.dataset.state === "online";
    sendButton.disabled = streaming || !online;
    regenerateButton.disabled = streaming || !online;
  }

  function scrollToEnd() {
    messages.scrollTop = messages.scrollHeight;
  }

  // -- what a person does -----------------------------------------------------------------

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = textarea.value.trim();
    if (!text || live) return;
    showError("");
    send({ type: "chat.send", roomId, requestId: requestId(), text });
    textarea.value = "";
  });

  textarea.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });

  stopButton.addEventListener("click", () => live && send({ type: "chat.cancel", requestId: live.requestId }));
  regenerateButton.addEventListener("click", () => send({ type: "chat.regenerate", roomId, requestId: requestId() }));

  function enableEditing() {
    for (const button of messages.querySelectorAll("button.edit-message[hidden]")) button.hidden = false;
  }

  messages.addEventListener("click", (event) => {
    const button = event.target.closest("button.edit-message");
    if (!button || live) return;
    const article = button.closest("article.message");
    const body = article.querySelector(".message-body");
    const editor = document.createElement("form");
    editor.className = "edit-form";
    const field = document.createElement("textarea");
    field.value = body.innerText.trim();
    field.setAttribute("aria-label", "Edit message");
    field.rows = 3;
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = "Save and resend";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "secondary";
    cancel.textContent = "Cancel";
    editor.append(field, save, cancel);
    body.hidden = true;
    button.hidden = true;
    article.append(editor);
    field.focus();
    cancel.addEventListener("click", () => {
      editor.remove();
      body.hidden = false;
      button.hidden = false;
    });
    editor.addEventListener("submit", (submitEvent) => {
      submitEvent.preventDefault();
      const text = field.value.trim();
      if (!text) return;
      send({ type: "chat.edit", requestId: requestId(), messageId: article.dataset.messageId, text });
      editor.remove();
      body.hidden = false;
      button.hidden = false;
    });
  });

  document.body.addEventListener("htmx:responseError", (event) => showError(event.detail.xhr.responseText));

  enableEditing();
  scrollToEnd();
  connect();
})();
