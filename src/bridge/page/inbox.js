// The notification inbox: the reference Socket.IO client of the bridge.
// It uses every event of the /notification namespace; read it top to
// bottom to see how a client is meant to talk to notify.
"use strict";

const PAGE_SIZE = 20;
const $ = (id) => document.getElementById(id);

const view = {
  page: 1,
  items: [], // the notifications shown, newest first
  totalPages: 0,
  loaded: false, // the first page has come
  socket: null,
};

// ---- signing in -----------------------------------------------------------

// A token in the URL fragment (never sent to a server) wins; it is moved
// to sessionStorage and removed from the address bar.
function takeToken() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const fromFragment = fragment.get("token");
  if (fromFragment) {
    sessionStorage.setItem("notify.token", fromFragment);
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("notify.token");
}

function showSignIn(reason) {
  $("sign-in").hidden = false;
  $("inbox").hidden = true;
  $("sign-out").hidden = true;
  $("mark-all").hidden = true;
  if (reason) setState("refused", `Refused: ${reason}`);
  else setState("signed-out", "Signed out");
  $("token").focus();
}

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  sessionStorage.setItem("notify.token", token);
  $("token").value = "";
  start(token);
});

$("sign-out").addEventListener("click", () => {
  sessionStorage.removeItem("notify.token");
  view.socket?.close();
  view.socket = null;
  view.items = [];
  render();
  showSignIn();
});

// ---- connection state -----------------------------------------------------

function setState(state, text) {
  const element = $("state");
  element.dataset.state = state;
  element.textContent = text;
}

// ---- the socket -----------------------------------------------------------

function start(token) {
  view.socket?.close();
  view.expired = false;
  $("sign-in").hidden = true;
  $("inbox").hidden = false;
  $("sign-out").hidden = false;
  $("mark-all").hidden = false;
  view.loaded = false;
  render();
  setState("connecting", "Connecting…");

  sessionStorage.setItem("notify.token", token);
  // The token is asked for at every (re)connect, so a fresh one pasted in
  // after the old one expired is the one sent.
  const socket = io("/notification", {
    auth: (send) => send({ token: sessionStorage.getItem("notify.token") }),
  });
  view.socket = socket;

  socket.on("connect", () => setState("live", "Live"));
  socket.on("disconnect", (reason) => {
    if (reason === "io client disconnect") return;
    if (reason === "io server disconnect") {
      // The bridge closed the session: at the token's expiry (appError 401
      // came first) sign in again; otherwise reconnect, which socket.io-client
      // does not do by itself after a server disconnect.
      if (view.expired) return;
      setState("reconnecting", "Reconnecting…");
      socket.connect();
      return;
    }
    setState("reconnecting", "Reconnecting…");
  });
  socket.io.on("reconnect_attempt", () => setState("reconnecting", "Reconnecting…"));
  socket.on("connect_error", (error) => {
    // The bridge refuses with the JSON error envelope as the message.
    let envelope = null;
    try { envelope = JSON.parse(error.message); } catch { /* a network error */ }
    if (envelope?.statusCode === 401) {
      socket.close();
      sessionStorage.removeItem("notify.token");
      showSignIn(envelope.message);
    } else {
      setState("reconnecting", "Reconnecting…");
    }
  });

  // Page 1 right after connect; the ack is our delivery receipt.
  socket.on("offlineNotifications", (envelope, ack) => {
    ack?.({ received: true });
    if (view.page === 1) showPage(envelope);
  });

  socket.on("notification", (notification, ack) => {
    ack?.({ received: true });
    setState("live", "Live");
    announce(`New notification: ${headline(notification)}`);
    if (view.page !== 1 || view.items.some((n) => n.id === notification.id)) return;
    view.items.unshift(notification);
    if (view.items.length > PAGE_SIZE) view.items.pop();
    render(notification.id);
  });

  // A change made in another tab, by a backend or by a receipt: this page
  // shows it too, without a reload.
  socket.on("notificationUpdated", ({ data }) => applyUpdate(data.ids, data.status));

  socket.on("unreadCount", ({ data }) => {
    setState("live", "Live");
    setBadge(data.count);
  });

  socket.on("userIsOffline", ({ data }) => showPeer(data, "went offline", data.lastSeenAt));
  socket.on("userIsOnline", ({ data }) => showPeer(data, "is online"));

  socket.on("appError", (error) => {
    if (error.statusCode === 503) setState("reconnecting", "Reconnecting to the notification service…");
    if (error.statusCode === 401) {
      // The token expired: the bridge disconnects this socket now.
      view.expired = true;
      sessionStorage.removeItem("notify.token");
      showSignIn("Your session expired: paste a fresh token to go on.");
      return;
    }
    showError(error.message, error.statusCode);
  });
}

async function loadPage(page) {
  const answer = await view.socket.timeout(10_000).emitWithAck("offlineNotifications", { page, limit: PAGE_SIZE });
  if (answer.error) return showError(answer.message, answer.statusCode);
  view.page = page;
  showPage(answer);
}

function showPage(envelope) {
  const { items, pagination } = envelope.data;
  view.items = items;
  view.page = pagination.currentPage;
  view.totalPages = pagination.totalPages;
  view.loaded = true;
  setBadge(pagination.totalRecords);
  render();
}

async function markRead(ids) {
  const answer = await view.socket.timeout(10_000).emitWithAck("markAsRead", { ids });
  if (answer.error) {
    showError(answer.message, answer.statusCode);
    return null;
  }
  return answer.data.updated;
}

// Everything unread, in batches: take the first page of 100, mark it, repeat.
async function markAllRead() {
  $("mark-all").disabled = true;
  for (let round = 0; round < 100; round++) {
    const answer = await view.socket.timeout(10_000).emitWithAck("offlineNotifications", { page: 1, limit: 100 });
    if (answer.error) return showError(answer.message, answer.statusCode);
    const ids = answer.data.items.map((n) => n.id);
    if (ids.length === 0) break;
    await markRead(ids);
  }
  announce("All notifications marked as read");
  await loadPage(1);
}

$("mark-all").addEventListener("click", () => markAllRead());
$("prev").addEventListener("click", () => loadPage(Math.max(1, view.page - 1)));
$("next").addEventListener("click", () => loadPage(view.page + 1));

// ---- rendering ------------------------------------------------------------

// The line a person reads first: the content's message if it has one.
function headline(notification) {
  const content = notification.content ?? {};
  for (const key of ["message", "title", "text", "body"]) {
    if (typeof content[key] === "string" && content[key].trim()) return content[key];
  }
  return notification.type;
}

function render(freshId) {
  const list = $("list");
  list.replaceChildren(...view.items.map((n) => renderItem(n, n.id === freshId)));
  $("loading").hidden = view.loaded;
  $("empty").hidden = !view.loaded || view.items.length > 0;
  // One page or none: nothing to page through.
  $("pager").hidden = view.totalPages <= 1 && view.page <= 1;
  $("page-label").textContent = view.totalPages > 1 ? `Page ${view.page} of ${view.totalPages}` : `Page ${view.page}`;
  $("prev").disabled = view.page <= 1;
  $("next").disabled = view.page >= view.totalPages;
}

// Shows the new status of the listed notifications among `ids`.
function applyUpdate(ids, status) {
  const changed = new Set(ids);
  for (const notification of view.items) {
    if (!changed.has(notification.id) || notification.status === "READ") continue;
    notification.status = status;
    const item = $("list").querySelector(`li[data-id="${notification.id}"]`);
    if (item) showStatus(item, status);
  }
}

function showStatus(item, status) {
  item.querySelector(".status").textContent = status.toLowerCase();
  if (status === "READ") {
    item.classList.add("read");
    item.querySelector(".mark")?.remove();
  }
}

function renderItem(notification, fresh) {
  const item = $("item-template").content.firstElementChild.cloneNode(true);
  item.dataset.id = notification.id;
  item.querySelector(".type").textContent = notification.type;
  // Without a message the headline is the type: shown once.
  item.querySelector(".type").hidden = headline(notification) === notification.type;
  const when = item.querySelector(".when");
  when.dateTime = notification.createdAt;
  when.title = `${new Date(notification.createdAt).toLocaleString()} (${notification.createdAt})`;
  when.textContent = relative(notification.createdAt);
  item.querySelector(".message").textContent = headline(notification);
  item.querySelector(".json").textContent = JSON.stringify(notification.content, null, 2);
  item.querySelector(".status").textContent = notification.status.toLowerCase();
  const mark = item.querySelector(".mark");
  mark.setAttribute("aria-label", `Mark "${headline(notification)}" read`);
  mark.addEventListener("click", async () => {
    mark.disabled = true;
    if ((await markRead([notification.id])) !== null) {
      notification.status = "READ";
      showStatus(item, "READ");
    }
  });
  if (notification.status === "READ") showStatus(item, "READ");
  if (fresh) {
    item.classList.add("fresh");
    setTimeout(() => item.classList.remove("fresh"), 3000);
  }
  return item;
}

function relative(iso) {
  const seconds = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (seconds < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (minutes < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (hours < 24) return `${hours} h ago`;
  const days = Math.round(hours / 24);
  if (days === 1) return "yesterday";
  if (days < 7) return `${days} days ago`;
  return new Date(iso).toLocaleDateString();
}

setInterval(() => {
  for (const when of document.querySelectorAll(".when")) when.textContent = relative(when.dateTime);
}, 30_000);

function setBadge(count) {
  const badge = $("badge");
  badge.hidden = count === 0;
  badge.textContent = String(count);
  badge.setAttribute("aria-label", `${count} unread`);
  $("mark-all").disabled = count === 0;
}

function showPeer(data, what, at) {
  const who = data.vendorId != null ? `Vendor ${data.vendorId}` : `Customer ${data.customerId}`;
  const line = document.createElement("li");
  line.textContent = at ? `${who} ${what} · ${relative(at)}` : `${who} ${what}`;
  line.dataset.peer = who;
  const peers = $("peers");
  peers.querySelector(`[data-peer="${who}"]`)?.remove();
  peers.prepend(line);
  while (peers.children.length > 5) peers.lastElementChild.remove();
}

function showError(message, statusCode) {
  const box = document.createElement("div");
  box.className = "error";
  box.setAttribute("role", "alert");
  const text = document.createElement("span");
  text.textContent = statusCode ? `${message} (${statusCode})` : message;
  const close = document.createElement("button");
  close.type = "button";
  close.textContent = "×";
  close.setAttribute("aria-label", "Dismiss");
  close.addEventListener("click", () => box.remove());
  box.append(text, close);
  const errors = $("errors");
  errors.append(box);
  while (errors.children.length > 3) errors.firstElementChild.remove();
}

function announce(text) {
  $("announcer").textContent = text;
}

// ---- go -------------------------------------------------------------------

const token = takeToken();
if (token) start(token);
else showSignIn();
