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
  const archivedSection = document.getElementById("archived-rooms");
  const archivedList = document.getElementById("archived-room-list");
  const archivedCount = document.getElementById("archived-count");

  let socket = null;
  let attempts = 0;
  let retryTimer = null;
  let live = null; // the answer streaming now, see startStream
  // Staff locked the room (Room.locked): it stays readable, and the composer stays disabled.
  const lockedNotice = document.getElementById("room-locked");
  let locked = Boolean(lockedNotice && !lockedNotice.hidden);

  const requestId = () => (crypto.randomUUID ? crypto.randomUUID() : String(Date.now()) + Math.random());
  const messageUrl = (id) => `/rooms/${roomId}/messages/${id}/`;

  function setConnection(state, label) {
    connection.dataset.state = state;
    connection.textContent = label;
    const usable = state === "online";
    textarea.disabled = !usable || locked;
    sendButton.disabled = !usable || Boolean(live) || locked;
    regenerateButton.disabled = !usable || Boolean(live) || locked;
  }

  function showError(text) {
    formError.textContent = text;
  }

  // True if the frame went out; a closed socket drops it (the page says it is offline).
  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    return true;
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
      if (event.code === 4429) {
        // SOCKETS_PER_USER of this user's tabs are connected already: try again, slowly.
        setConnection("offline", "too many open tabs; retrying in 30s");
        retryTimer = setTimeout(connect, 30000);
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
        // A message still streaming (a tool call changed state) is shown from its chunks; the
        // server renders finished messages only.
        if (frame.roomId !== roomId || frame.message.status === "streaming") return;
        return fetchMessage(frame.message.id);
      case "message.removed":
        return frame.roomId === roomId && document.getElementById(`message-${frame.messageId}`)?.remove();
      case "message.feedback":
        return frame.roomId === roomId && refreshFeedback(frame.messageId);
      case "stream.start":
        return startStream(frame.streamId, frame.requestId, frame.messageId, false);
      case "stream.resuming":
        return startStream(frame.streamId, frame.requestId, null, true);
      case "stream.chunk":
        return applyChunk(frame);
      case "stream.replay_complete":
        return replayComplete(frame);
      case "stream.data":
        return live && live.streamId === frame.streamId && showTransient(frame.chunk);
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
        if (frame.code === "stale_cursor") return forgetLive(frame.streamId);
        if (typeof frame.ref === "string" && /^tool-(result|approval):/.test(frame.ref)) return toolAnswerRefused(frame);
        return showError(frame.message);
      default:
        return;
    }
  }

  // The same order and markup as the server's sidebar (selectors.room_sidebar_for_user and the
  // `room-item` partial): pinned rooms first, archived ones apart in their collapsed section.
  function renderRooms(rooms) {
    const focused = document.activeElement && document.activeElement.closest("#room-list li, #archived-room-list li");
    const shown = rooms.filter((room) => !room.archived);
    const archived = rooms.filter((room) => room.archived);
    const pinnedFirst = shown.filter((room) => room.pinned).concat(shown.filter((room) => !room.pinned));
    roomList.replaceChildren(...pinnedFirst.map(roomItem));
    archivedList.replaceChildren(...archived.map(roomItem));
    archivedSection.hidden = archived.length === 0;
    archivedCount.textContent = String(archived.length);
    const current = rooms.find((room) => room.id === roomId);
    if (current) showCurrentRoom(current);
    if (focused) {
      // Keyboard users stay on the room they were on (or just restored), wherever it moved.
      const selector = `li[data-room-id="${focused.dataset.roomId}"] a`;
      (roomList.querySelector(selector) || archivedList.querySelector(selector))?.focus();
    }
  }

  function roomItem(room) {
    const item = document.createElement("li");
    item.dataset.roomId = room.id;
    if (room.id === roomId) {
      item.classList.add("current");
      item.setAttribute("aria-current", "page");
    }
    if (room.pinned) item.classList.add("pinned");
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
    const pin = document.createElement("span");
    pin.className = "pin-marker";
    pin.textContent = "· pinned";
    pin.hidden = !room.pinned;
    meta.append(count, " · ", active, " ", marker, " ", pin);
    link.append(name, meta);
    item.append(link);
    if (room.archived) item.append(restoreForm(room));
    return item;
  }

  // As templates/chatrooms/room_restore.html.
  function restoreForm(room) {
    const form = document.createElement("form");
    form.className = "room-restore";
    form.method = "post";
    form.action = `/rooms/${room.id}/archive/`;
    form.dataset.frame = "room.archive";
    form.dataset.roomId = room.id;
    const button = document.createElement("button");
    button.type = "submit";
    button.className = "link";
    const hiddenName = document.createElement("span");
    hiddenName.className = "visually-hidden";
    hiddenName.textContent = ` ${room.name}`;
    button.append("Restore", hiddenName);
    form.append(hiddenInput("csrfmiddlewaretoken", csrfToken()), hiddenInput("archived", "false"), button);
    return form;
  }

  function hiddenInput(name, value) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    return input;
  }

  const csrfToken = () => document.querySelector('input[name="csrfmiddlewaretoken"]')?.value || "";

  function showCurrentRoom(room) {
    document.getElementById("room-title").textContent = room.name;
    document.title = `${room.name} · Chatrooms`;
    textarea.placeholder = `Message ${room.name} — Enter to send, Shift+Enter for a new line`;
    if (Boolean(room.locked) !== locked) setLocked(Boolean(room.locked));
    setMark("room.pin", "pinned", room.pinned, room.pinned ? "Unpin room" : "Pin room");
    setMark("room.archive", "archived", room.archived, room.archived ? "Restore room" : "Archive room");
    const members = [...document.querySelectorAll("#member-list li[data-username]")].map((li) => li.dataset.username);
    if (room.members && members.join("\n") !== room.members.join("\n")) refreshMembers();
  }

  // The header's pin and archive buttons (room_marks.html) say what a press would do next.
  function setMark(frameType, field, on, label) {
    const form = document.querySelector(`#room-marks form[data-frame="${frameType}"]`);
    if (!form) return;
    form.elements[field].value = String(!on);
    form.querySelector("button").textContent = label;
  }

  // The server's rendering of the members (room_members.html), when a `rooms` frame shows a change.
  function refreshMembers() {
    fetch(`/rooms/${roomId}/members/`, { headers: { "HX-Request": "true" } })
      .then((response) => (response.ok ? response.text() : null))
      .then((html) => {
        const shown = document.getElementById("room-members");
        if (html === null || !shown) return;
        const holder = document.createElement("template");
        holder.innerHTML = html.trim();
        const element = holder.content.firstElementChild;
        shown.replaceWith(element);
        if (window.htmx) window.htmx.process(element);
      });
  }

  // Pin, archive and restore go over the socket (the `rooms` frame that follows redraws the sidebar);
  // with no socket open, the form posts as it does without JavaScript.
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-frame]");
    if (!form) return;
    const field = form.dataset.frame === "room.pin" ? "pinned" : "archived";
    const on = form.elements[field].value === "true";
    if (send({ type: form.dataset.frame, roomId: form.dataset.roomId, [field]: on })) event.preventDefault();
  });

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
    // Messages older than the page's first one are the "Older messages" link's to load, a page at
    // a time as it is scrolled to: fetched here too, they would come twice (and scroll to the end).
    const shown = [...messages.querySelectorAll("article.message[data-message-id]")].map((e) => Number(e.dataset.messageId));
    const pageStart = messages.querySelector("a.older") && shown.length ? Math.min(...shown) : -Infinity;
    for (const message of list) {
      if (Number(message.id) >= pageStart && !document.getElementById(`message-${message.id}`)) fetchMessage(message.id);
    }
    enableEditing();
  }

  // This person rated an answer, here or in another tab: show the server's rendering of their
  // thumbs, unless they are using them in this tab right now (its own htmx answer shows them).
  function refreshFeedback(id) {
    const block = document.getElementById(`feedback-${id}`);
    if (!block || block.contains(document.activeElement) || !window.htmx) return;
    window.htmx.ajax("GET", `/rooms/${roomId}/messages/${id}/feedback/`, { target: block, swap: "outerHTML" });
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
        // Focus on a tool card of the replaced bubble stays on that card in the server's rendering.
        const focusedCall = existing && existing.contains(document.activeElement)
          ? document.activeElement.closest("[data-tool-call-id]")?.dataset.toolCallId : null;
        if (existing) {
          existing.replaceWith(element);
          if (focusedCall) element.querySelector(`[data-tool-call-id="${CSS.escape(focusedCall)}"] summary`)?.focus();
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
  // The bubble is built from chunks the way an AI SDK client builds a message's parts: text,
  // reasoning, tool calls (one card each, with an approval prompt where a tool asks for one),
  // data parts, and the usage line. The server's rendering replaces it at stream.done.

  // Tools this page answers itself with `tool.result`: name -> the output for a call's input.
  const CLIENT_TOOLS = {
    get_local_time: () => {
      const now = new Date();
      return {
        localTime: localIsoString(now),
        timeZone: Intl.DateTimeFormat().resolvedOptions().timeZone,
        utcOffsetMinutes: -now.getTimezoneOffset(),
      };
    },
  };

  // "2026-11-26T21:00:00+01:00": the reader's wall-clock time with its offset (toISOString gives UTC).
  function localIsoString(moment) {
    const pad = (number) => String(Math.abs(Math.trunc(number))).padStart(2, "0");
    const offset = -moment.getTimezoneOffset();
    const date = `${moment.getFullYear()}-${pad(moment.getMonth() + 1)}-${pad(moment.getDate())}`;
    const time = `${pad(moment.getHours())}:${pad(moment.getMinutes())}:${pad(moment.getSeconds())}`;
    return `${date}T${time}${offset < 0 ? "-" : "+"}${pad(offset / 60)}:${pad(offset % 60)}`;
  }

  const compactJson = (value) => JSON.stringify(value === undefined ? null : value);
  const prettyJson = (value) => JSON.stringify(value === undefined ? null : value, null, 2);

  // The same words as chatrooms/templatetags/chat_render.py, so the swap at stream.done changes nothing.
  function toolStateLabel(call) {
    const approved = Boolean(call.approval && call.approval.approved);
    switch (call.state) {
      case "input-streaming":
        return "Calling…";
      case "input-available":
        return CLIENT_TOOLS[call.toolName] ? "Waiting for your browser…" : "Running…";
      case "approval-requested":
        return "Waiting for approval";
      case "approval-responded":
        return approved ? "Approved · running…" : "Denied";
      case "output-available":
        if (call.preliminary) return "In progress…";
        return approved ? "Approved · done" : "Done";
      case "output-error":
        return "Failed";
      case "output-denied":
        return "Denied";
      default:
        return call.state;
    }
  }

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
    const status = document.createElement("p");
    status.className = "transient-status";
    status.hidden = true;
    const usage = document.createElement("p");
    usage.className = "usage";
    usage.hidden = true;
    bubble.append(head, body, status, usage);
    messages.append(bubble);
    live = {
      streamId, requestId: reqId, messageId, lastIndex: -1, bubble, body, status, usage, resuming,
      text: null, // the <p> that text deltas go to, until another part comes between
      reasoning: new Map(), // reasoning part id -> its <p>
      tools: new Map(), // toolCallId -> the call as the AI SDK's tool part, plus its card
      data: new Map(), // "data-x#id" -> the element of a data part that has an id
    };
    setStreaming(true);
    scrollToEnd();
  }

  function applyChunk(frame) {
    if (!live || live.streamId !== frame.streamId || frame.index <= live.lastIndex) return;
    live.lastIndex = frame.index;
    const chunk = frame.chunk;
    const kind = String(chunk.type || "");
    switch (kind) {
      case "start":
        live.messageId = chunk.messageId;
        break;
      case "text-start":
        newTextParagraph();
        break;
      case "text-delta":
        if (!live.text) newTextParagraph();
        live.text.append(document.createTextNode(chunk.delta || "")); // text, never markup
        break;
      case "text-end":
        live.text = null;
        break;
      case "reasoning-start":
        reasoningParagraph(chunk.id);
        break;
      case "reasoning-delta":
        reasoningParagraph(chunk.id).append(document.createTextNode(chunk.delta || ""));
        break;
      case "tool-input-start":
      case "tool-input-available":
      case "tool-approval-request":
      case "tool-output-available":
      case "tool-output-error":
      case "tool-output-denied": {
        const call = updateToolCall(chunk);
        // A call seen in a replay may have been answered since: answer at replay_complete instead.
        if (kind === "tool-input-available" && !frame.replay) answerClientTool(call);
        break;
      }
      case "tool-approval-response":
        approvalAnswered(chunk);
        break;
      case "error":
        showError(chunk.errorText);
        break;
      default:
        if (kind.startsWith("data-")) showDataPart(chunk);
        break;
    }
    scrollToEnd();
  }

  function newTextParagraph() {
    live.text = document.createElement("p");
    live.text.className = "streaming-text";
    live.body.append(live.text);
  }

  // Open while it streams; the stored message shows it collapsed.
  function reasoningParagraph(id) {
    const key = String(id);
    let paragraph = live.reasoning.get(key);
    if (!paragraph) {
      const block = document.createElement("details");
      block.className = "reasoning";
      block.open = true;
      const summary = document.createElement("summary");
      summary.textContent = "Reasoning";
      paragraph = document.createElement("p");
      paragraph.className = "streaming-text";
      block.append(summary, paragraph);
      live.body.append(block);
      live.text = null;
      live.reasoning.set(key, paragraph);
    }
    return paragraph;
  }

  // -- data parts: same type and id replace in place, no id appends; usage goes under the answer

  function showDataPart(chunk) {
    if (chunk.transient) return showTransient(chunk);
    if (chunk.type === "data-usage") return showUsage(chunk.data);
    const key = chunk.id === undefined || chunk.id === null ? null : `${chunk.type}#${chunk.id}`;
    const element = chunk.type === "data-notice" ? noticeElement(chunk.data) : dataElement(chunk);
    const existing = key && live.data.get(key);
    if (existing) {
      existing.replaceWith(element);
    } else {
      live.body.append(element);
      live.text = null;
    }
    if (key) live.data.set(key, element);
  }

  function noticeElement(data) {
    const note = document.createElement("p");
    note.className = "notice";
    note.setAttribute("role", "note");
    note.textContent = data && typeof data.text === "string" ? data.text : compactJson(data);
    return note;
  }

  function dataElement(chunk) {
    const block = document.createElement("details");
    block.className = "data-part";
    const summary = document.createElement("summary");
    summary.textContent = chunk.type.slice("data-".length);
    const json = document.createElement("pre");
    json.textContent = compactJson(chunk.data);
    block.append(summary, json);
    return block;
  }

  function showUsage(data) {
    if (!data || typeof data !== "object") return;
    const pieces = data.model ? [String(data.model)] : [];
    pieces.push(`${data.inputTokens || 0} in`, `${data.outputTokens || 0} out`);
    live.usage.textContent = pieces.join(" · ");
    live.usage.title = `${data.totalTokens || 0} tokens in total`;
    live.usage.hidden = false;
  }

  // A transient data part (`stream.data`): never stored, so shown only as the bubble's latest status.
  function showTransient(chunk) {
    if (!live || !chunk || !String(chunk.type || "").startsWith("data-")) return;
    const data = chunk.data;
    const words = data && typeof data === "object" && typeof data.text === "string" ? data.text : compactJson(data);
    live.status.textContent = `${chunk.type.slice("data-".length)}: ${words}`;
    live.status.hidden = false;
  }

  // -- tool calls -------------------------------------------------------------------------

  function updateToolCall(chunk) {
    let call = live.tools.get(chunk.toolCallId);
    if (!call) {
      call = { toolCallId: chunk.toolCallId, toolName: chunk.toolName || "tool", state: "input-streaming",
               input: undefined, output: undefined, errorText: "", preliminary: false, approval: null };
      call.card = toolCard(call);
      live.body.append(call.card);
      live.text = null;
      live.tools.set(call.toolCallId, call);
    }
    switch (chunk.type) {
      case "tool-input-available":
        call.state = "input-available";
        call.input = chunk.input;
        break;
      case "tool-approval-request":
        call.state = "approval-requested";
        call.approval = { id: chunk.approvalId };
        break;
      case "tool-output-available":
        call.state = "output-available";
        call.output = chunk.output;
        call.preliminary = Boolean(chunk.preliminary);
        call.errorText = "";
        break;
      case "tool-output-error":
        call.state = "output-error";
        call.errorText = chunk.errorText || "";
        call.output = undefined;
        call.preliminary = false;
        break;
      case "tool-output-denied":
        call.state = "output-denied";
        break;
      default:
        break;
    }
    renderToolCall(call);
    return call;
  }

  function approvalAnswered(chunk) {
    for (const call of live.tools.values()) {
      if (call.approval && call.approval.id === chunk.approvalId) {
        call.state = "approval-responded";
        call.approval = { id: chunk.approvalId, approved: Boolean(chunk.approved) };
        renderToolCall(call);
      }
    }
  }

  // The same markup as the `message` partial's tool card.
  function toolCard(call) {
    const card = document.createElement("details");
    card.className = "tool-card";
    card.dataset.toolCallId = call.toolCallId;
    const summary = document.createElement("summary");
    const name = document.createElement("span");
    name.className = "tool-name";
    name.textContent = call.toolName;
    const state = document.createElement("span");
    state.className = "tool-state";
    summary.append(name, " ", state);
    const io = document.createElement("div");
    io.className = "tool-io";
    const section = (title, className, tag = "pre") => {
      const heading = document.createElement("h4");
      heading.textContent = title;
      const content = document.createElement(tag);
      content.className = className;
      return [heading, content];
    };
    const denied = document.createElement("p");
    denied.className = "tool-denied";
    denied.textContent = "Denied: the tool did not run.";
    io.append(...section("Input", "tool-input"), ...section("Output", "tool-output"), denied,
              ...section("Error", "tool-error"));
    card.append(summary, io);
    return card;
  }

  function renderToolCall(call) {
    const card = call.card;
    card.className = `tool-card state-${call.state}${call.preliminary ? " preliminary" : ""}`;
    card.querySelector(".tool-state").textContent = toolStateLabel(call);
    card.querySelector(".tool-input").textContent = prettyJson(call.input);
    const output = card.querySelector(".tool-output");
    output.textContent = call.output === undefined ? "" : prettyJson(call.output);
    output.hidden = output.previousElementSibling.hidden = call.output === undefined;
    card.querySelector(".tool-denied").hidden = call.state !== "output-denied";
    const error = card.querySelector(".tool-error");
    error.textContent = call.errorText;
    error.hidden = error.previousElementSibling.hidden = !call.errorText;
    if (call.state === "approval-requested" && !call.prompt) {
      // A busy region is not read out until it is done: while the answer waits for a person, it is
      // not busy, so that the prompt added next is announced.
      live.bubble.setAttribute("aria-busy", "false");
      call.prompt = approvalPrompt(call);
      card.after(call.prompt);
    } else if (call.state !== "approval-requested" && call.prompt) {
      const hadFocus = call.prompt.contains(document.activeElement) || call.answeredHere;
      call.prompt.remove();
      call.prompt = null;
      const stillWaiting = [...live.tools.values()].some((other) => other.prompt);
      live.bubble.setAttribute("aria-busy", String(!stillWaiting));
      // Keyboard users land on the card that now says what came of their answer, not on <body>.
      if (hadFocus && (document.activeElement === document.body || !document.activeElement)) {
        card.querySelector("summary").focus();
      }
    }
  }

  // "<tool> wants to run with <input>", Approve / Deny. Announced by the live region it is added to.
  function approvalPrompt(call) {
    const prompt = document.createElement("div");
    prompt.className = "tool-approval";
    prompt.dataset.toolCallId = call.toolCallId;
    prompt.setAttribute("role", "group");
    prompt.setAttribute("aria-label", `Approve ${call.toolName}?`);
    const question = document.createElement("p");
    question.id = `approval-question-${call.toolCallId}`;
    const name = document.createElement("code");
    name.textContent = call.toolName;
    const input = document.createElement("code");
    input.textContent = compactJson(call.input);
    question.append(name, " wants to run with ", input);
    const actions = document.createElement("div");
    actions.className = "row";
    const approve = document.createElement("button");
    approve.type = "button";
    approve.textContent = "Approve";
    const deny = document.createElement("button");
    deny.type = "button";
    deny.className = "secondary";
    deny.textContent = "Deny";
    const status = document.createElement("span");
    status.className = "approval-status";
    status.setAttribute("aria-live", "polite"); // not role=status: that names the connection pill
    for (const button of [approve, deny]) button.setAttribute("aria-describedby", question.id);
    approve.addEventListener("click", () => answerApproval(call, true));
    deny.addEventListener("click", () => answerApproval(call, false));
    actions.append(approve, deny, status);
    prompt.append(question, actions);
    return prompt;
  }

  function answerApproval(call, approved) {
    if (!live || !call.prompt) return;
    const status = call.prompt.querySelector(".approval-status");
    const sent = send({ type: "tool.approval", requestId: live.requestId, toolCallId: call.toolCallId, approved,
                        ref: `tool-approval:${call.toolCallId}` });
    if (!sent) {
      status.textContent = "Not connected: try again once the page says connected.";
      return;
    }
    call.answeredHere = true;
    status.textContent = approved ? "Approving…" : "Denying…";
    // Disabled until the server's next chunk for this call replaces the prompt.
    for (const button of call.prompt.querySelectorAll("button")) button.disabled = true;
  }

  function answerClientTool(call) {
    const answer = CLIENT_TOOLS[call.toolName];
    if (!answer || call.state !== "input-available") return;
    let output;
    try {
      output = answer(call.input);
    } catch (error) {
      output = { error: String(error) };
    }
    send({ type: "tool.result", requestId: live.requestId, toolCallId: call.toolCallId, output,
           ref: `tool-result:${call.toolCallId}` });
  }

  // After a (re)join's replay: answer the client-tool calls still waiting, and let approvals whose
  // answer may have been lost with the old connection be given again.
  function replayComplete(frame) {
    if (!live || live.streamId !== frame.streamId) return;
    for (const call of live.tools.values()) {
      answerClientTool(call);
      if (call.prompt) {
        for (const button of call.prompt.querySelectorAll("button")) button.disabled = false;
        call.prompt.querySelector(".approval-status").textContent = "";
      }
    }
  }

  // An `error` answering one of our tool frames (matched by its `ref`).
  function toolAnswerRefused(frame) {
    const separator = frame.ref.indexOf(":");
    const [what, toolCallId] = [frame.ref.slice(0, separator), frame.ref.slice(separator + 1)];
    const prompt = what === "tool-approval" && live && live.tools.get(toolCallId)?.prompt;
    if (frame.code === "not_found") {
      // Another tab (or this one, before a reconnect) answered first, or the wait ended: expected,
      // and the stream itself says what came of the call.
      if (prompt) prompt.querySelector(".approval-status").textContent = "Already answered, or no longer waiting.";
      return;
    }
    if (prompt) {
      for (const button of prompt.querySelectorAll("button")) button.disabled = false;
      prompt.querySelector(".approval-status").textContent = "";
    }
    showError(frame.message);
  }

  // The server could not continue from where this page was in a stream (see stale_cursor in
  // docs/protocol.md): drop the partial bubble; the whole answer follows from its first chunk.
  function forgetLive(streamId) {
    if (!live || live.streamId !== streamId) return;
    live.bubble.remove();
    live = null;
    setStreaming(false);
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
    sendButton.disabled = streaming || !online || locked;
    regenerateButton.disabled = streaming || !online || locked;
  }

  function setLocked(value) {
    locked = value;
    if (lockedNotice) lockedNotice.hidden = !value;
    textarea.disabled = locked || connection.dataset.state !== "online";
    setStreaming(Boolean(live));
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
    const frame = { type: "chat.send", roomId, requestId: requestId(), text };
    // The page's other scripts may add to the frame, or hold it back (attachments.js: files still uploading).
    if (!composer.dispatchEvent(new CustomEvent("chat:send", { detail: frame, cancelable: true }))) return;
    if (send(frame)) composer.dispatchEvent(new CustomEvent("chat:sent", { detail: frame }));
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
  // A link to one message (a search result: #message-<id>) opens the page at it, not at the end.
  const linked = location.hash.startsWith("#message-") && document.getElementById(location.hash.slice(1));
  if (linked) linked.scrollIntoView({ block: "center" });
  else scrollToEnd();
  connect();
})();
