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
  category: null, // the category tab shown; null: every category
  shelf: "INBOX", // INBOX (unread) or ARCHIVED
  byCategory: {}, // unread per category, as the last unreadCount said
  unread: 0,
  newestSeq: 0, // the highest seq this page has seen: "mark all" stops there
  muted: new Set(), // "category/CHANNEL" pairs the user turned off
  settingCategories: new Set(["general", "marketing", "order"]), // rows of the settings grid
};

// The connect-time page is the unread inbox of every category.
const showingDefault = () => view.shelf === "INBOX" && view.category === null;

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
  $("archive-read").hidden = true;
  $("preferences-toggle").hidden = true;
  $("preferences").hidden = true;
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
  $("archive-read").hidden = false;
  $("preferences-toggle").hidden = false;
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

  // Page 1 right after connect; the ack is our delivery receipt. A tab
  // showing another category or the archive reads its own page instead.
  socket.on("offlineNotifications", (envelope, ack) => {
    ack?.({ received: true });
    if (view.page !== 1) return;
    if (showingDefault()) showPage(envelope);
    else loadPage(1);
  });

  socket.on("notification", (notification, ack) => {
    ack?.({ received: true });
    setState("live", "Live");
    view.newestSeq = Math.max(view.newestSeq, notification.seq ?? 0);
    announce(`New notification: ${headline(notification)}`);
    if (view.items.some((n) => n.id === notification.id)) return;
    const shown = view.shelf === "INBOX" && (view.category === null || view.category === notification.category);
    // An update of something shown (its collapse key's newer one) takes the
    // old one's place; the old one's replacedBy follows.
    const replaced = view.items.findIndex((n) => n.id === notification.replaces);
    if (replaced >= 0) {
      if (shown) view.items[replaced] = notification;
      else view.items.splice(replaced, 1);
      return render(notification.id);
    }
    if (!shown || view.page !== 1) return;
    view.items.unshift(notification);
    if (view.items.length > PAGE_SIZE) view.items.pop();
    render(notification.id);
  });

  // A change made in another tab, by a backend or by a receipt: this page
  // shows it too, without a reload.
  socket.on("notificationUpdated", ({ data }) => applyUpdate(data));

  socket.on("unreadCount", ({ data }) => {
    setState("live", "Live");
    view.byCategory = data.byCategory ?? {};
    setBadge(data.count);
    renderTabs();
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

// The page of the tab and shelf shown.
function pageRequest(page) {
  const request = { page, limit: PAGE_SIZE, view: view.shelf };
  if (view.category !== null) request.category = view.category;
  return request;
}

async function loadPage(page) {
  const asked = pageRequest(page);
  const answer = await view.socket.timeout(10_000).emitWithAck("offlineNotifications", asked);
  if (answer.error) return showError(answer.message, answer.statusCode);
  // Another tab or shelf was chosen while this page was on its way.
  if (asked.view !== view.shelf || (asked.category ?? null) !== view.category) return;
  view.page = page;
  showPage(answer);
}

function showPage(envelope) {
  const { items, pagination } = envelope.data;
  view.items = items;
  view.page = pagination.currentPage;
  view.totalPages = pagination.totalPages;
  view.loaded = true;
  for (const n of items) view.newestSeq = Math.max(view.newestSeq, n.seq ?? 0);
  if (showingDefault()) setBadge(pagination.totalRecords);
  render();
}

// Chooses a category tab (null: every category) or a shelf, from page 1.
function choose({ category = view.category, shelf = view.shelf }) {
  view.category = category;
  view.shelf = shelf;
  view.page = 1;
  view.loaded = false;
  view.items = [];
  render();
  renderTabs();
  loadPage(1);
}

async function markRead(ids) {
  const answer = await view.socket.timeout(10_000).emitWithAck("markAsRead", { ids });
  if (answer.error) {
    showError(answer.message, answer.statusCode);
    return null;
  }
  return answer.data.updated;
}

// Everything unread of the tab shown, in one request, up to the newest this
// page has seen: one that arrives meanwhile stays unread.
async function markAllRead() {
  $("mark-all").disabled = true;
  const request = {};
  if (view.category !== null) request.category = view.category;
  if (view.newestSeq > 0) request.upToSeq = view.newestSeq;
  const answer = await view.socket.timeout(10_000).emitWithAck("markAllAsRead", request);
  if (answer.error) return showError(answer.message, answer.statusCode);
  announce(`${answer.data.updated} notifications marked as read`);
  await loadPage(1);
}

// Presses one of a notification's buttons: the notification becomes READ
// and shows which was taken (every tab hears it as notificationUpdated).
async function completeAction(notification, action) {
  const answer = await view.socket.timeout(10_000).emitWithAck("completeAction", {
    id: notification.id,
    actionId: action.id,
  });
  if (answer.error) {
    showError(answer.message, answer.statusCode);
    return null;
  }
  announce(`${action.label}: done`);
  return answer.data;
}

async function archive(ids, archived) {
  const answer = await view.socket.timeout(10_000).emitWithAck("archive", { ids, archived });
  if (answer.error) {
    showError(answer.message, answer.statusCode);
    return null;
  }
  return answer.data.updated;
}

// The read ones shown leave the inbox for the archive.
async function archiveAllRead() {
  const ids = view.items.filter((n) => n.status === "READ").map((n) => n.id);
  if (ids.length === 0) return;
  $("archive-read").disabled = true;
  if ((await archive(ids, true)) !== null) {
    drop(ids);
    announce(`${ids.length} read notifications archived`);
  }
}

$("mark-all").addEventListener("click", () => markAllRead());
$("archive-read").addEventListener("click", () => archiveAllRead());
for (const button of document.querySelectorAll(".view")) {
  button.addEventListener("click", () => choose({ shelf: button.dataset.view }));
}
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
  $("empty").textContent = view.shelf === "ARCHIVED" ? "Nothing archived." : "You're all caught up.";
  $("archive-read").disabled = view.shelf !== "INBOX" || !view.items.some((n) => n.status === "READ");
  // One page or none: nothing to page through.
  $("pager").hidden = view.totalPages <= 1 && view.page <= 1;
  $("page-label").textContent = view.totalPages > 1 ? `Page ${view.page} of ${view.totalPages}` : `Page ${view.page}`;
  $("prev").disabled = view.page <= 1;
  $("next").disabled = view.page >= view.totalPages;
}

// The category tabs: every category with unread ones, with its count,
// and the one shown even when it has none left.
// ---- preferences -----------------------------------------------------------

// A grid of categories by channel, ticked while on. Every pair is on until
// the user turns it off; getPreferences answers the pairs turned off, and
// setPreferences (one rule per click) answers them again after the change.
const CHANNELS = { PUSH: "push", IN_APP: "in app", EMAIL: "e-mail", SMS: "SMS" };

$("preferences-toggle").addEventListener("click", async () => {
  const panel = $("preferences");
  panel.hidden = !panel.hidden;
  $("preferences-toggle").setAttribute("aria-expanded", String(!panel.hidden));
  if (!panel.hidden) await loadPreferences();
});

async function loadPreferences() {
  try {
    const answer = await view.socket.timeout(10_000).emitWithAck("getPreferences");
    if (answer.error) return showError(answer.message, answer.statusCode);
    showPreferences(answer.data.rules);
  } catch {
    showError("the settings did not load; try again", 504);
  }
}

function showPreferences(rules) {
  view.muted = new Set(rules.map((rule) => `${rule.category}/${rule.channel}`));
  for (const rule of rules) view.settingCategories.add(rule.category);
  renderPreferences();
}

function renderPreferences() {
  const categories = [...new Set([...view.settingCategories, ...Object.keys(view.byCategory)])].sort();
  $("preferences-rows").replaceChildren(...categories.map((category) => {
    const row = document.createElement("tr");
    const name = document.createElement("th");
    name.scope = "row";
    name.className = "category";
    name.textContent = category;
    row.append(name);
    for (const [channel, label] of Object.entries(CHANNELS)) {
      const cell = document.createElement("td");
      const box = document.createElement("input");
      box.type = "checkbox";
      box.checked = !view.muted.has(`${category}/${channel}`);
      box.dataset.category = category;
      box.dataset.channel = channel;
      box.setAttribute("aria-label", `${category} by ${label}`);
      box.addEventListener("change", () => setPreference(category, channel, box.checked));
      cell.append(box);
      row.append(cell);
    }
    return row;
  }));
}

async function setPreference(category, channel, enabled) {
  for (const box of document.querySelectorAll("#preferences-rows input")) box.disabled = true;
  try {
    const answer = await view.socket.timeout(10_000).emitWithAck("setPreferences", {
      rules: [{ category, channel, enabled }],
    });
    if (answer.error) showError(answer.message, answer.statusCode);
    else {
      showPreferences(answer.data.rules);
      announce(`${category} by ${CHANNELS[channel]} is ${enabled ? "on" : "off"}`);
    }
  } catch {
    showError("the setting was not saved; try again", 504);
  }
  renderPreferences();
}

$("add-category").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("new-category");
  const category = input.value.trim();
  if (!/^[a-z0-9_-]{1,64}$/.test(category)) return;
  view.settingCategories.add(category);
  input.value = "";
  renderPreferences();
});

function renderTabs() {
  const categories = Object.keys(view.byCategory);
  if (view.category !== null && !categories.includes(view.category)) categories.push(view.category);
  categories.sort();
  const tab = (category, label, count) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "tab";
    button.dataset.category = category ?? "";
    button.setAttribute("aria-current", String(view.category === category));
    const name = document.createElement("span");
    name.className = category === null ? "" : "category";
    name.textContent = label;
    const badge = document.createElement("span");
    badge.className = "count";
    badge.textContent = String(count);
    badge.setAttribute("aria-label", `${count} unread`);
    button.append(name, badge);
    button.addEventListener("click", () => choose({ category }));
    return button;
  };
  $("tabs").replaceChildren(
    tab(null, "All", view.unread),
    ...categories.map((c) => tab(c, c, view.byCategory[c] ?? 0)),
  );
  for (const button of document.querySelectorAll(".view")) {
    button.setAttribute("aria-pressed", String(button.dataset.view === view.shelf));
  }
}

// Shows a change of the listed notifications: a new status in place; an
// expired one leaves, an archived one leaves the inbox, one brought back
// leaves the archive.
function applyUpdate(data) {
  const leaving = data.expired === true
    || data.replacedBy !== undefined
    || (data.archived === true && view.shelf === "INBOX")
    || (data.archived === false && view.shelf === "ARCHIVED");
  if (leaving) return drop(data.ids);
  const changed = new Set(data.ids);
  for (const notification of view.items) {
    if (!changed.has(notification.id)) continue;
    const item = $("list").querySelector(`li[data-id="${notification.id}"]`);
    if (data.actionTaken) {
      notification.actionTaken = data.actionTaken;
      if (item) showActions(item, notification);
    }
    if (!data.status || notification.status === "READ") continue;
    notification.status = data.status;
    if (item) showStatus(item, data.status);
  }
  $("archive-read").disabled = view.shelf !== "INBOX" || !view.items.some((n) => n.status === "READ");
}

// Takes the notifications among `ids` off the page shown.
function drop(ids) {
  const gone = new Set(ids);
  if (!view.items.some((n) => gone.has(n.id))) return;
  view.items = view.items.filter((n) => !gone.has(n.id));
  render();
}

function showStatus(item, status) {
  item.querySelector(".status").textContent = status.toLowerCase();
  if (status === "READ") {
    item.classList.add("read");
    item.querySelector(".mark")?.remove();
    $("archive-read").disabled = view.shelf !== "INBOX";
  }
}

// The notification's buttons, or once one was taken, which and when. A
// button with a URL is a link (the core allows https: and http: only, and
// so does this), opened in a new tab as the action is recorded.
function showActions(item, notification) {
  const choices = item.querySelector(".choices");
  const taken = item.querySelector(".taken");
  const actions = notification.actionTaken ? [] : notification.actions ?? [];
  choices.hidden = actions.length === 0;
  choices.replaceChildren(...actions.map((action) => {
    const web = typeof action.url === "string" && /^https?:\/\//i.test(action.url);
    const choice = document.createElement(web ? "a" : "button");
    choice.className = "choice";
    choice.textContent = action.label;
    choice.dataset.action = action.id;
    if (web) {
      choice.href = action.url;
      choice.target = "_blank";
      choice.rel = "noopener noreferrer";
    } else {
      choice.type = "button";
    }
    choice.addEventListener("click", async () => {
      for (const other of choices.children) other.setAttribute("aria-disabled", "true");
      const done = await completeAction(notification, action);
      if (done === null) {
        for (const other of choices.children) other.removeAttribute("aria-disabled");
        return;
      }
      notification.actionTaken = done.actionTaken;
      notification.status = done.status;
      showActions(item, notification);
      showStatus(item, done.status);
    });
    return choice;
  }));
  const done = notification.actionTaken;
  taken.hidden = !done;
  if (done) {
    const label = (notification.actions ?? []).find((a) => a.id === done.id)?.label ?? done.id;
    taken.textContent = `${label} · ${relative(done.at)}`;
    taken.title = done.at;
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
  const shelve = item.querySelector(".archive");
  const archived = view.shelf === "ARCHIVED";
  shelve.textContent = archived ? "Move to inbox" : "Archive";
  shelve.setAttribute("aria-label", `${archived ? "Move to inbox" : "Archive"} "${headline(notification)}"`);
  shelve.addEventListener("click", async () => {
    shelve.disabled = true;
    if ((await archive([notification.id], !archived)) !== null) drop([notification.id]);
    else shelve.disabled = false;
  });
  showActions(item, notification);
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
  view.unread = count;
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
