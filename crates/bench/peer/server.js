// The peer bridge: what a team would write instead of `notify bridge`, with
// the reference socket.io server and @grpc/grpc-js. It serves the same
// /notification namespace with the same events and JSON, over the same
// core, so benchmarks compare like with like.
//
//   node crates/bench/peer/server.js --listen 127.0.0.1:0 --core-url http://127.0.0.1:50051 --jwt-secret SECRET
//
// Left out on purpose (the Rust bridge has them): per-socket rate limits,
// the sockets-per-user cap, origin checks, stalled-socket detection,
// /readyz and /metrics.
import http from "node:http";
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { Server } from "socket.io";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import jwt from "jsonwebtoken";

function fail(reason) {
  console.error(`error: ${reason}`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      listen: { type: "string", default: process.env.NOTIFY_LISTEN ?? "127.0.0.1:3000" },
      "core-url": { type: "string", default: process.env.NOTIFY_CORE_URL ?? "http://127.0.0.1:50051" },
      "jwt-secret": { type: "string", default: process.env.NOTIFY_JWT_SECRET },
      "api-token": { type: "string", default: process.env.NOTIFY_API_TOKEN },
    },
  }));
} catch (error) {
  fail(error.message);
}
if (!args["jwt-secret"]) fail("--jwt-secret (or NOTIFY_JWT_SECRET) is required");

const ACK_TIMEOUT_MS = 10_000;
const PAGE_LIMIT = 20;
const MAX_IDS_PER_CALL = 1000;

// ---- the core ------------------------------------------------------------

const protoPath = fileURLToPath(new URL("../../../proto/notify/v1/notify.proto", import.meta.url));
const definition = protoLoader.loadSync(protoPath, { longs: Number, enums: String, defaults: true, oneofs: true });
const { NotificationService } = grpc.loadPackageDefinition(definition).notify.v1;
const core = new NotificationService(
  args["core-url"].replace(/^https?:\/\//, ""),
  grpc.credentials.createInsecure(),
  { "grpc.max_receive_message_length": 16 * 1024 * 1024 },
);

function metadata() {
  const meta = new grpc.Metadata();
  if (args["api-token"]) meta.set("authorization", `Bearer ${args["api-token"]}`);
  return meta;
}

/** A unary call to the core as a promise. */
function callCore(method, request) {
  return new Promise((resolve, reject) => {
    core[method](request, metadata(), (error, response) => (error ? reject(error) : resolve(response)));
  });
}

/** The request fields naming a user. */
const recipient = (user) => (user.role === "vendor" ? { vendorId: user.id } : { customerId: user.id });

// ---- JSON for browsers -----------------------------------------------------

const ok = (data) => ({ statusCode: 200, error: false, message: null, data });
const appError = (statusCode, message) => ({ error: true, message, statusCode });
const coreUnavailable = () =>
  appError(503, "notification service unavailable; reconnecting, nothing is lost");

class ClientError extends Error {}

const codes = grpc.status;
const HTTP_STATUS = new Map([
  [codes.INVALID_ARGUMENT, 400], [codes.OUT_OF_RANGE, 400], [codes.FAILED_PRECONDITION, 400], [codes.PERMISSION_DENIED, 403],
  [codes.NOT_FOUND, 404], [codes.RESOURCE_EXHAUSTED, 429],
]);
const CORE_DOWN = new Set([codes.UNAVAILABLE, codes.DEADLINE_EXCEEDED, codes.CANCELLED, codes.UNKNOWN]);

/** A thrown error as the `appError` envelope. */
function toAppError(error) {
  if (error instanceof ClientError) return appError(400, error.message);
  if (CORE_DOWN.has(error.code)) return coreUnavailable();
  return appError(HTTP_STATUS.get(error.code) ?? 500, error.details ?? String(error));
}

/** google.protobuf.Struct back to a plain object. */
function fromStruct(struct) {
  const fields = Object.entries(struct?.fields ?? {});
  return Object.fromEntries(fields.map(([key, value]) => [key, fromValue(value)]));
}

function fromValue(value) {
  switch (value.kind) {
    case "numberValue": return value.numberValue;
    case "stringValue": return value.stringValue;
    case "boolValue": return value.boolValue;
    case "structValue": return fromStruct(value.structValue);
    case "listValue": return (value.listValue.values ?? []).map(fromValue);
    default: return null;
  }
}

/** A notification as browsers see it, in the seed's field order. */
function notificationJson(n) {
  const { id, vendorId = null, customerId = null, type, channel, status, priority, createdAt, updatedAt, seq, category } = n;
  const content = fromStruct(n.content);
  const archivedAt = n.archivedAt || null;
  const expiresAt = n.expiresAt || null;
  const collapseKey = n.collapseKey || null;
  const replaces = n.replaces || null;
  const replacedBy = n.replacedBy || null;
  const actions = (n.actions ?? []).map(({ id, label, url }) => (url ? { id, label, url } : { id, label }));
  const actionTaken = n.actionTaken ? { id: n.actionTaken.id, at: n.actionTaken.at } : null;
  return {
    id, vendorId, customerId, type, channel, content, status, priority, createdAt, updatedAt, seq,
    category, archivedAt, expiresAt, collapseKey, replaces, replacedBy, actions, actionTaken,
  };
}

/** One page of the user's unread inbox as the envelope, and its ids. */
async function offlinePage(user, page, limit) {
  const response = await callCore("ListOffline", { ...recipient(user), page, limit });
  const { currentPage, nextPage, prevPage, hasNext, hasPrev, totalPages, totalRecords } = response.pagination;
  const pagination = {
    currentPage, nextPage: nextPage ?? null, prevPage: prevPage ?? null, hasNext, hasPrev, totalPages, totalRecords,
  };
  const envelope = ok({ items: response.items.map(notificationJson), pagination });
  return { envelope, ids: response.items.map((n) => n.id) };
}

// ---- delivery receipts -------------------------------------------------------

// Acked ids wait here, per user, while a round of MarkNotifications calls is
// in flight, so under load many acks share one call.
const receipts = new Map();
let flushing = false;

function receipt(user, ids) {
  const key = `${user.role}:${user.id}`;
  if (!receipts.has(key)) receipts.set(key, { user, ids: [] });
  receipts.get(key).ids.push(...ids);
  if (!flushing) {
    flushing = true;
    setImmediate(flushReceipts);
  }
}

async function flushReceipts() {
  while (receipts.size > 0) {
    const batch = [...receipts.values()];
    receipts.clear();
    const calls = [];
    for (const { user, ids } of batch) {
      for (let i = 0; i < ids.length; i += MAX_IDS_PER_CALL) {
        const request = { ...recipient(user), ids: ids.slice(i, i + MAX_IDS_PER_CALL), status: "DELIVERED" };
        calls.push(callCore("MarkNotifications", request).catch((error) => {
          // It stays SENT, and in the offline list until read.
          console.error(`delivery receipt not recorded for ${user.role} ${user.id}: ${error.details}`);
        }));
      }
    }
    await Promise.all(calls);
  }
  flushing = false;
}

// ---- one core stream per user, shared by their sockets -------------------------

const feeds = new Map();

class Feed {
  constructor(user) {
    this.user = user;
    this.sockets = new Set();
    this.connected = false;
    this.stopped = false;
    this.waiters = [];
    this.lastSeq = null;
    this.lastUnread = null;
    this.outage = false;
    this.call = null;
    this.run();
  }

  /** Resolves once the stream is open (or the feed stopped). */
  waitConnected() {
    if (this.connected || this.stopped) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  setConnected(connected) {
    this.connected = connected;
    if (connected) this.waiters.splice(0).forEach((resolve) => resolve());
  }

  stop() {
    this.stopped = true;
    this.call?.cancel();
    this.waiters.splice(0).forEach((resolve) => resolve());
  }

  emit(event, data) {
    for (const socket of this.sockets) socket.emit(event, data);
  }

  unreadChanged(count, byCategory = {}) {
    const data = { count, byCategory: sortedKeys(byCategory) };
    const said = JSON.stringify(data);
    if (this.lastUnread === said) return;
    this.lastUnread = said;
    this.emit("unreadCount", ok(data));
  }

  /** Follows the stream; after a failure, reconnects with backoff and resumes after the last seq. */
  async run() {
    let backoff = 100;
    while (!this.stopped) {
      try {
        await this.follow();
        return;
      } catch (error) {
        this.setConnected(false);
        if (this.stopped) return;
        if (!this.outage) {
          this.outage = true;
          console.error(`stream to the core lost for ${this.user.role} ${this.user.id}: ${error.details ?? error.message}`);
          this.emit("appError", toAppError(error));
        }
        await sleep(backoff * (0.75 + Math.random() / 2));
        backoff = Math.min(backoff * 2, 5000);
      }
    }
  }

  /** Resolves when the feed is stopped, rejects when the stream fails. */
  async follow() {
    // First time: start after the newest notification; sockets get older
    // ones from their offline page, read after the stream is open.
    const head = await callCore("ListOffline", { ...recipient(this.user), page: 1, limit: 1 });
    if (this.stopped) return;
    this.lastSeq ??= head.lastSeq;
    const call = core.StreamUserEvents(
      { ...recipient(this.user), afterSeq: this.lastSeq, presence: true },
      metadata(),
    );
    this.call = call;
    await new Promise((resolve, reject) => {
      call.on("metadata", async () => {
        this.setConnected(true);
        if (this.outage) {
          // Back after an outage: tell the sockets the count as it is now.
          this.outage = false;
          this.lastUnread = null;
          const counts = await callCore("GetUnreadCounts", recipient(this.user)).catch(() => null);
          if (counts) this.unreadChanged(counts.count, counts.byCategory);
        }
      });
      call.on("data", (event) => this.passOn(event));
      call.on("error", (error) => (this.stopped ? resolve() : reject(error)));
      call.on("end", () => {
        if (this.stopped) resolve();
        else reject(Object.assign(new Error("the core ended the stream"), { code: codes.UNAVAILABLE }));
      });
    });
  }

  passOn(event) {
    if (event.event === "notification") {
      this.lastSeq = Math.max(this.lastSeq ?? 0, event.notification.seq);
      const json = notificationJson(event.notification);
      for (const socket of this.sockets) {
        socket.timeout(ACK_TIMEOUT_MS).emit("notification", json, (timedOut) => {
          if (!timedOut) receipt(this.user, [json.id]);
        });
      }
    } else if (event.event === "notificationUpdated") {
      // Only the fields that changed.
      const { ids, status, updatedAt, archived } = event.notificationUpdated;
      const data = { ids };
      if (status && status !== "STATUS_UNSPECIFIED") data.status = status;
      if (archived !== undefined && archived !== null) data.archived = archived;
      const { expired, replacedBy, actionTaken } = event.notificationUpdated;
      if (expired !== undefined && expired !== null) data.expired = expired;
      if (replacedBy) data.replacedBy = replacedBy;
      if (actionTaken) data.actionTaken = { id: actionTaken.id, at: actionTaken.at };
      data.updatedAt = updatedAt;
      this.emit("notificationUpdated", ok(data));
    } else if (event.event === "userOffline") {
      const { vendorId = null, customerId = null, lastSeenAt } = event.userOffline;
      const data = { vendorId, customerId, lastSeenAt };
      this.emit("userIsOffline", { error: false, message: "User has gone offline", data, statusCode: 200 });
    } else if (event.event === "userOnline") {
      const { vendorId = null, customerId = null } = event.userOnline;
      const data = { vendorId, customerId };
      this.emit("userIsOnline", { error: false, message: "User is online", data, statusCode: 200 });
    }
    if (event.unreadCount !== undefined) this.unreadChanged(event.unreadCount, event.unreadByCategory);
  }
}

/** The same object with its keys in order, as the bridge sends them. */
function sortedKeys(object) {
  return Object.fromEntries(Object.entries(object ?? {}).sort(([a], [b]) => a.localeCompare(b)));
}

function attach(user, socket) {
  const key = `${user.role}:${user.id}`;
  let feed = feeds.get(key);
  if (!feed) {
    feed = new Feed(user);
    feeds.set(key, feed);
  }
  feed.sockets.add(socket);
  return feed;
}

function detach(user, socket) {
  const key = `${user.role}:${user.id}`;
  const feed = feeds.get(key);
  if (!feed) return;
  feed.sockets.delete(socket);
  if (feed.sockets.size === 0) {
    // Closing the stream tells the core the user went offline.
    feed.stop();
    feeds.delete(key);
  }
}

// ---- authentication -------------------------------------------------------------

/** The user a token names; throws the message the client is told. */
function verifyToken(token) {
  let claims;
  try {
    claims = jwt.verify(token, args["jwt-secret"], { algorithms: ["HS256"] });
  } catch (error) {
    if (error.name === "TokenExpiredError") throw new Error("token expired");
    if (error.name === "NotBeforeError") throw new Error("token not yet valid");
    if (error.message === "invalid signature") throw new Error("invalid token: bad signature");
    if (error.message === "invalid algorithm") throw new Error("invalid token: algorithm must be HS256");
    throw new Error("invalid token: malformed");
  }
  // sub, role and exp are required, with those types.
  const { sub, role, exp } = claims;
  if (typeof sub !== "string" || typeof role !== "string" || !Number.isInteger(exp) || exp < 0) {
    throw new Error("invalid token: malformed");
  }
  const id = Number(sub);
  if (!/^[+-]?\d+$/.test(sub) || !Number.isSafeInteger(id) || id <= 0) {
    throw new Error("invalid token: sub must be a positive numeric id");
  }
  if (role !== "vendor" && role !== "customer") throw new Error("invalid token: role must be vendor or customer");
  return { role, id };
}

function authenticate(socket, next) {
  const { auth, headers } = socket.handshake;
  const fromAuth = typeof auth?.token === "string" ? auth.token : "";
  const fromHeader = headers.authorization?.startsWith("Bearer ") ? headers.authorization.slice(7).trim() : "";
  const token = fromAuth || fromHeader;
  try {
    if (!token) {
      throw new Error("authentication required: send auth.token or an Authorization: Bearer header");
    }
    socket.data.user = verifyToken(token);
    next();
  } catch (error) {
    // socket.io-client shows `message`; it is the envelope's JSON text.
    const envelope = appError(401, error.message);
    next(Object.assign(new Error(JSON.stringify(envelope)), { data: envelope }));
  }
}

// ---- client events ---------------------------------------------------------------

/** The payload as an object (absent means {}), or a 400. */
function object(payload) {
  if (payload === undefined || payload === null) return {};
  if (typeof payload !== "object" || Array.isArray(payload)) {
    throw new ClientError(`payload must be a JSON object, got ${JSON.stringify(payload)}`);
  }
  return payload;
}

function optionalInt(payload, field) {
  const value = payload[field];
  if (value === undefined || value === null) return undefined;
  if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
    throw new ClientError(`${field}: must be an integer, got ${JSON.stringify(value)}`);
  }
  return value;
}

/** Answers a client event through its ack; a failure is also an `appError`. */
async function answer(socket, ack, work) {
  try {
    const envelope = await work();
    ack?.(envelope);
  } catch (error) {
    const envelope = toAppError(error);
    socket.emit("appError", envelope);
    ack?.(envelope);
  }
}

async function onOfflineNotifications(user, payload) {
  const fields = object(payload);
  // The core checks the ranges (page ≥ 1, limit 1..100) and names the field.
  const page = optionalInt(fields, "page") ?? 1;
  const limit = optionalInt(fields, "limit") ?? PAGE_LIMIT;
  return (await offlinePage(user, page, limit)).envelope;
}

/** The `ids` field: an array of strings (the core checks the ids themselves). */
function idsOf(fields) {
  const { ids } = fields;
  if (ids === undefined) throw new ClientError("ids: required");
  if (!Array.isArray(ids)) throw new ClientError(`ids: must be an array of ids, got ${JSON.stringify(ids)}`);
  ids.forEach((id, index) => {
    if (typeof id !== "string") throw new ClientError(`ids[${index}]: must be a string, got ${JSON.stringify(id)}`);
  });
  return ids;
}

async function onMarkAsRead(user, payload) {
  // The core checks the ids themselves (1..1000, 24 hex characters).
  const ids = idsOf(object(payload));
  const { updated } = await callCore("MarkNotifications", { ...recipient(user), ids, status: "READ" });
  return ok({ updated });
}

async function onMarkAllAsRead(user, payload) {
  const { category, upToSeq } = object(payload);
  if (category !== undefined && category !== null && typeof category !== "string") {
    throw new ClientError(`category: must be a string, got ${JSON.stringify(category)}`);
  }
  if (upToSeq !== undefined && upToSeq !== null && !Number.isInteger(upToSeq)) {
    throw new ClientError(`upToSeq: must be an integer, got ${JSON.stringify(upToSeq)}`);
  }
  // The core checks the category and the seq's range, naming the field.
  const request = { ...recipient(user), status: "READ", category: category ?? "" };
  if (upToSeq !== undefined && upToSeq !== null) request.upToSeq = upToSeq;
  const { updated } = await callCore("MarkAllNotifications", request);
  return ok({ updated });
}

async function onArchive(user, payload) {
  const fields = object(payload);
  const archived = fields.archived ?? true;
  if (typeof archived !== "boolean") {
    throw new ClientError(`archived: must be true or false, got ${JSON.stringify(archived)}`);
  }
  const { updated } = await callCore("ArchiveNotifications", { ...recipient(user), ids: idsOf(fields), archived });
  return ok({ updated });
}

async function onCompleteAction(user, payload) {
  const { id, actionId } = object(payload);
  for (const [field, value] of [["id", id], ["actionId", actionId]]) {
    if (typeof value !== "string") {
      throw new ClientError(`${field}: must be a string, got ${JSON.stringify(value ?? null)}`);
    }
  }
  // The core checks both and whether the action may be taken.
  const done = await callCore("CompleteAction", { ...recipient(user), id, actionId });
  return ok(notificationJson(done));
}

const CHANNELS = ["PUSH", "IN_APP", "EMAIL", "SMS"];

/** The pairs turned off, as the socket spells them. */
function rulesJson({ rules = [] }) {
  return { rules: rules.map(({ category, channel, enabled }) => ({ category, channel, enabled: enabled ?? false })) };
}

async function onGetPreferences(user) {
  return ok(rulesJson(await callCore("GetPreferences", recipient(user))));
}

async function onSetPreferences(user, payload) {
  const { rules } = object(payload);
  if (!Array.isArray(rules)) throw new ClientError("rules: required, a list of rules");
  if (rules.length < 1 || rules.length > 100) {
    throw new ClientError(`rules: must list 1 to 100 rules, got ${rules.length}`);
  }
  const checked = rules.map((rule, index) => {
    const bad = (field, reason) => new ClientError(`rules[${index}].${field}: ${reason}`);
    if (rule === null || typeof rule !== "object" || Array.isArray(rule)) {
      throw new ClientError(`rules[${index}]: must be an object, got ${JSON.stringify(rule)}`);
    }
    const { category, channel, enabled } = rule;
    if (category === undefined || category === null) throw bad("category", "required");
    if (typeof category !== "string") throw bad("category", `must be a string, got ${JSON.stringify(category)}`);
    if (typeof channel !== "string") throw bad("channel", "required: PUSH, IN_APP, EMAIL or SMS");
    if (!CHANNELS.includes(channel)) throw bad("channel", `unknown ${JSON.stringify(channel)}; use PUSH, IN_APP, EMAIL or SMS`);
    if (enabled === undefined || enabled === null) throw bad("enabled", "required: true or false");
    if (typeof enabled !== "boolean") throw bad("enabled", `must be true or false, got ${JSON.stringify(enabled)}`);
    return { category, channel, enabled };
  });
  return ok(rulesJson(await callCore("SetPreferences", { ...recipient(user), rules: checked })));
}

const HANDLERS = {
  offlineNotifications: onOfflineNotifications,
  markAsRead: onMarkAsRead,
  markAllAsRead: onMarkAllAsRead,
  archive: onArchive,
  completeAction: onCompleteAction,
  getPreferences: onGetPreferences,
  setPreferences: onSetPreferences,
};

async function onConnection(socket) {
  const { user } = socket.data;
  socket.onAny((event, ...args) => {
    // The ack, when the client asked for one, is the last argument.
    const ack = typeof args.at(-1) === "function" ? args.pop() : undefined;
    answer(socket, ack, () => {
      if (!Object.hasOwn(HANDLERS, event)) {
        const shown = JSON.stringify(String(event).slice(0, 64));
        throw new ClientError(`unknown event ${shown}: use offlineNotifications, markAsRead, markAllAsRead, archive, completeAction, getPreferences or setPreferences`);
      }
      return HANDLERS[event](user, args[0]);
    });
  });
  socket.on("disconnect", () => detach(user, socket));

  // The stream is open before the list is read, so a notification created
  // meanwhile is in the list, live, or both; never in neither.
  const feed = attach(user, socket);
  const opened = await Promise.race([
    feed.waitConnected().then(() => true),
    sleep(2000, false, { ref: false }),
  ]);
  if (!opened) {
    socket.emit("appError", coreUnavailable());
    await feed.waitConnected();
  }
  if (!socket.connected) return;
  try {
    const { envelope, ids } = await offlinePage(user, 1, PAGE_LIMIT);
    // Acking the page marks its items DELIVERED.
    socket.timeout(ACK_TIMEOUT_MS).emit("offlineNotifications", envelope, (timedOut) => {
      if (!timedOut && ids.length > 0) receipt(user, ids);
    });
    const counts = await callCore("GetUnreadCounts", recipient(user));
    socket.emit("unreadCount", ok({ count: counts.count, byCategory: sortedKeys(counts.byCategory) }));
  } catch (error) {
    socket.emit("appError", toAppError(error));
  }
}

// ---- HTTP and Socket.IO ------------------------------------------------------------

const httpServer = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok");
  } else {
    res.writeHead(404).end();
  }
});

// Same heartbeat and payload limit as notify bridge; both transports, as by default.
const io = new Server(httpServer, { pingInterval: 10_000, pingTimeout: 10_000, maxHttpBufferSize: 100_000 });
const namespace = io.of("/notification");
namespace.use(authenticate);
namespace.on("connection", onConnection);

const separator = args.listen.lastIndexOf(":");
const host = args.listen.slice(0, separator).replace(/^\[(.*)\]$/, "$1");
const port = Number(args.listen.slice(separator + 1));
if (separator < 0 || !/^\d+$/.test(args.listen.slice(separator + 1)) || port > 65535) {
  fail(`--listen must be HOST:PORT, got ${JSON.stringify(args.listen)}`);
}
httpServer.once("error", (error) => fail(`cannot listen on ${args.listen}: ${error.message}`));
httpServer.listen(port, host, () => {
  const { address, port: bound } = httpServer.address();
  const shown = address.includes(":") ? `[${address}]` : address;
  console.log(`peer bridge ready http=${shown}:${bound}`);
});

function shutdown() {
  for (const feed of feeds.values()) feed.stop();
  setTimeout(() => process.exit(0), 5000).unref();
  io.close(() => {
    core.close();
    process.exit(0);
  });
}
process.once("SIGTERM", shutdown);
process.once("SIGINT", shutdown);
