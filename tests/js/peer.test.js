// The Node.js peer bridge of the benchmarks (crates/bench/peer/server.js) against
// notify bridge: one core, both bridges in front of it, the same user on
// each, and every event they send must carry the same JSON. Needs
// `cd crates/bench/peer && npm ci` (socket.io, @grpc/grpc-js, jsonwebtoken).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import {
  Core, Bridge, Peer, SECRET, token, connect, until, events, request, toStruct, sleep,
} from "./harness.js";

const stack = {};
before(async () => {
  stack.core = await Core.start();
  // Settled, not raced: a bridge that started beside a peer that failed is
  // still kept, so `after` stops it instead of leaving it to hold the run open.
  const started = await Promise.allSettled([Bridge.start(stack.core), Peer.start(stack.core)]);
  [stack.bridge, stack.peer] = started.map((s) => (s.status === "fulfilled" ? s.value : undefined));
  const failed = started.find((s) => s.status === "rejected");
  if (failed) throw failed.reason;
});
after(async () => {
  const peerExit = await stack.peer?.stop();
  await stack.bridge?.stop();
  await stack.core?.stop();
  assert.equal(peerExit, 0, "the peer exits 0 on SIGTERM");
});

const CONTENT = {
  message: "Product has been uploaded successfully",
  data: { id: 63, price: "22", isAvailable: true, rating: 4.5, none: null, tags: ["a", 1, { b: [] }],
    name: "Größe ✓", nested: { deeper: { deepest: -7 } } },
};

/** Asserts both sockets got the same events, in the same order, with the same JSON text. */
function assertSameEvents(ours, peer, what) {
  assert.deepEqual(peer.received, ours.received, `${what}: peer events equal ours`);
  assert.equal(JSON.stringify(peer.received), JSON.stringify(ours.received), `${what}: byte for byte`);
}

/** Waits for a condition on both sockets. */
async function bothUntil(sockets, predicate, what) {
  await Promise.all(sockets.map((socket) => until(socket, () => predicate(socket), what)));
}

const unreadCounts = (socket) => events(socket, "unreadCount").map((u) => u.data.count);

async function status(id) {
  return (await stack.core.call("GetNotification", { id })).status;
}

async function waitForStatus(id, expected) {
  let seen;
  for (let i = 0; i < 100 && seen !== expected; i++) {
    seen = await status(id);
    if (seen !== expected) await sleep(50);
  }
  assert.equal(seen, expected, `notification ${id} is ${expected}`);
}

for (const transports of [["websocket"], ["polling"]]) {
  test(`the peer sends what notify bridge sends (${transports})`, async () => {
    const vendor = transports[0] === "websocket" ? 7001 : 7002;
    const first = await stack.core.create({ vendorId: vendor, content: toStruct(CONTENT) });
    const second = await stack.core.create({ vendorId: vendor, type: "order:paid", channel: "IN_APP", priority: 3,
      content: toStruct({ orderId: 881, total: 12.5 }) });

    // Each socket acks only the notifications whose content names it.
    const acking = (name) => ({
      notification: (n, ack) => {
        if (n.content.ackBy === name) ack({ received: true });
      },
    });
    const auth = { token: token({ vendor }) };
    const ours = await connect(stack.bridge, { auth, transports, listeners: acking("ours") });
    const peer = await connect(stack.peer, { auth, transports, listeners: acking("peer") });
    const sockets = [ours, peer];
    try {
      await bothUntil(sockets, (s) => events(s, "unreadCount").length, "unreadCount");
      assertSameEvents(ours, peer, "on connect");
      const [offline] = events(peer, "offlineNotifications");
      assert.deepEqual(offline.data.items.map((n) => n.id), [second.id, first.id]);
      assert.deepEqual(offline.data.items[1].content, CONTENT);
      assert.deepEqual(unreadCounts(peer), [2]);

      // Live notifications, each acknowledged by one of the two sockets.
      const third = await stack.core.create({ vendorId: vendor, content: toStruct({ ackBy: "ours" }) });
      await bothUntil(sockets, (s) => unreadCounts(s).includes(3), "count 3");
      await waitForStatus(third.id, "DELIVERED");
      const fourth = await stack.core.create({ vendorId: vendor, content: toStruct({ ackBy: "peer" }) });
      await bothUntil(sockets, (s) => unreadCounts(s).includes(4), "count 4");
      await waitForStatus(fourth.id, "DELIVERED");
      const fifth = await stack.core.create({ vendorId: vendor, content: toStruct({ ackBy: "nobody" }) });
      await bothUntil(sockets, (s) => unreadCounts(s).includes(5), "count 5");
      assert.deepEqual(events(peer, "notification").map((n) => n.id), [third.id, fourth.id, fifth.id]);
      assertSameEvents(ours, peer, "live");
      await sleep(300);
      assert.equal(await status(fifth.id), "SENT", "an unacknowledged notification stays SENT");

      // Client events: the same answers through the ack.
      for (const payload of [undefined, {}, { page: 1, limit: 2 }, { page: 2, limit: 2 }, { page: 9 }]) {
        const [a, b] = await Promise.all(sockets.map((s) => request(s, "offlineNotifications", payload)));
        assert.equal(a.statusCode, 200);
        assert.deepEqual(b, a, `offlineNotifications ${JSON.stringify(payload)}`);
        assert.equal(JSON.stringify(b), JSON.stringify(a));
      }
      const [page] = await Promise.all(sockets.map((s) => request(s, "offlineNotifications", { limit: 5 })));
      assert.deepEqual(page.data.items.map((n) => n.status), ["SENT", "DELIVERED", "DELIVERED", "SENT", "SENT"]);

      // Bad input: the same 400 through the ack, and the same appError.
      const bad = [
        ["offlineNotifications", { page: 0 }], ["offlineNotifications", { limit: 101 }],
        ["offlineNotifications", { page: "2" }], ["offlineNotifications", [1, 2]],
        ["markAsRead", {}], ["markAsRead", { ids: "x" }], ["markAsRead", { ids: [] }],
        ["markAsRead", { ids: [7] }], ["markAsRead", { ids: ["not-an-id"] }], ["noSuchEvent", {}],
      ];
      for (const [event, payload] of bad) {
        const [a, b] = await Promise.all(sockets.map((s) => request(s, event, payload)));
        assert.equal(a.statusCode, 400, `${event} ${JSON.stringify(payload)}: ${a.message}`);
        assert.deepEqual(b, a, `${event} ${JSON.stringify(payload)}`);
      }
      await bothUntil(sockets, (s) => events(s, "appError").length === bad.length, "every appError");

      // markAsRead, one id from each socket: the same answer, and both see the counts fall.
      const readByOurs = await request(ours, "markAsRead", { ids: [first.id] });
      await bothUntil(sockets, (s) => unreadCounts(s).at(-1) === 4, "count 4 after a read");
      const readByPeer = await request(peer, "markAsRead", { ids: [second.id.toUpperCase(), second.id] });
      await bothUntil(sockets, (s) => unreadCounts(s).at(-1) === 3, "count 3 after a read");
      assert.deepEqual(readByOurs, { statusCode: 200, error: false, message: null, data: { updated: 1 } });
      assert.deepEqual(readByPeer, readByOurs);
      assert.equal(await status(second.id), "READ");
      const again = await Promise.all(sockets.map((s) => request(s, "markAsRead", { ids: [first.id] })));
      assert.deepEqual(again[1], again[0]);
      assert.equal(again[1].data.updated, 0);

      // An update that collapses another, and an action: the same events.
      const update = () => stack.core.create({
        vendorId: vendor, content: toStruct({ ackBy: "nobody" }), collapseKey: "order-9",
        actions: [{ id: "ok", label: "OK" }, { id: "web", label: "Open", url: "https://shop.example/o/9" }],
      });
      const sixth = await update();
      await bothUntil(sockets, (s) => unreadCounts(s).at(-1) === 4, "count 4");
      const seventh = await update();
      assert.equal(seventh.replaces, sixth.id);
      await bothUntil(sockets, (s) => events(s, "notificationUpdated").some((u) => u.data.replacedBy === seventh.id),
        "the replaced one");
      const unknown = await Promise.all(sockets.map((s) => request(s, "completeAction", { id: seventh.id, actionId: "no" })));
      assert.equal(unknown[0].statusCode, 400);
      assert.deepEqual(unknown[1], unknown[0]);
      const done = await request(peer, "completeAction", { id: seventh.id, actionId: "ok" });
      assert.equal(done.data.actionTaken.id, "ok");
      assert.deepEqual(done.data.actions[1], { id: "web", label: "Open", url: "https://shop.example/o/9" });
      const twice = await Promise.all(sockets.map((s) => request(s, "completeAction", { id: seventh.id, actionId: "ok" })));
      assert.equal(twice[0].statusCode, 400);
      assert.deepEqual(twice[1], twice[0]);
      await bothUntil(sockets, (s) => unreadCounts(s).at(-1) === 3, "count 3 after the action");

      await sleep(200);
      assertSameEvents(ours, peer, "the whole session");
      assert.deepEqual(unreadCounts(peer), [2, 3, 4, 5, 4, 3, 4, 3]);
    } finally {
      ours.close();
      peer.close();
    }
  });
}

test("acknowledging offlineNotifications marks the page DELIVERED on both", async () => {
  const sessions = [[stack.bridge, 7101], [stack.peer, 7102]];
  const created = {};
  for (const [, vendor] of sessions) {
    created[vendor] = [await stack.core.create({ vendorId: vendor }), await stack.core.create({ vendorId: vendor })];
  }
  const sockets = await Promise.all(sessions.map(([server, vendor]) => connect(server, {
    auth: { token: token({ vendor }) },
    listeners: { offlineNotifications: (_page, ack) => ack("ok") },
  })));
  try {
    for (const [, vendor] of sessions) {
      for (const n of created[vendor]) await waitForStatus(n.id, "DELIVERED");
    }
  } finally {
    sockets.forEach((s) => s.close());
  }
});

/** The core's notify_open_streams gauge. */
async function openStreams() {
  const text = await (await fetch(stack.core.metricsUrl)).text();
  return Number(text.match(/^notify_open_streams (\S+)$/m)?.[1] ?? 0);
}

async function streamsBecome(expected, what) {
  let seen;
  for (let i = 0; i < 100 && seen !== expected; i++) {
    seen = await openStreams();
    if (seen !== expected) await sleep(50);
  }
  assert.equal(seen, expected, what);
}

test("a user's sockets share one core stream, closed with the last; presence as ours", async () => {
  await stack.core.call("JoinRoom", { room: "peer:1", vendorId: 7301 });
  await stack.core.call("JoinRoom", { room: "peer:1", customerId: 7302 });
  const heard = [];
  for (const server of [stack.bridge, stack.peer]) {
    const observer = await connect(server, { auth: { token: token({ customer: 7302 }) } });
    await until(observer, () => events(observer, "unreadCount").length, "observer ready");
    await sleep(300);
    const base = await openStreams();
    const sockets = [];
    for (const transports of [["websocket"], ["polling"], ["websocket"]]) {
      const socket = await connect(server, { auth: { token: token({ vendor: 7301 }) }, transports });
      sockets.push(socket);
      await until(socket, () => events(socket, "unreadCount").length, "socket ready");
    }
    await streamsBecome(base + 1, "three sockets of one user, one stream");
    await until(observer, () => events(observer, "userIsOnline").length, "userIsOnline");
    sockets[0].close();
    sockets[1].close();
    await sleep(500);
    assert.equal(await openStreams(), base + 1, "one socket left: the stream stays");
    assert.equal(events(observer, "userIsOffline").length, 0, "one socket left: still online");
    sockets[2].close();
    await until(observer, () => events(observer, "userIsOffline").length, "userIsOffline");
    await streamsBecome(base, "the last socket closes the stream");
    await sleep(300);
    observer.close();
    for (const { event, data } of observer.received) {
      if (event === "userIsOffline") {
        assert.match(data.data.lastSeenAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
        data.data.lastSeenAt = "(time)";
      }
    }
    heard.push(observer.received);
  }
  assert.deepEqual(heard[1].map((r) => r.event),
    ["offlineNotifications", "unreadCount", "userIsOnline", "userIsOffline"]);
  assert.deepEqual(heard[1], heard[0]);
  assert.equal(JSON.stringify(heard[1]), JSON.stringify(heard[0]));
});

/** An HS256 (or other) JWT, signed here so every claim can be wrong. */
function sign(claims, { secret = SECRET, alg = "HS256" } = {}) {
  const part = (object) => Buffer.from(JSON.stringify(object)).toString("base64url");
  const unsigned = `${part({ alg, typ: "JWT" })}.${part(claims)}`;
  const hash = { HS256: "sha256", HS512: "sha512" }[alg];
  const signature = hash ? createHmac(hash, secret).update(unsigned).digest("base64url") : "";
  return `${unsigned}.${signature}`;
}

test("both refuse the same tokens with the same CONNECT_ERROR envelope", async () => {
  const now = Math.floor(Date.now() / 1000);
  const valid = { sub: "7201", role: "vendor", exp: now + 600 };
  const cases = {
    "no token": undefined,
    "empty token": { token: "" },
    "not a JWT": { token: "not.a.token" },
    "another secret": { token: sign(valid, { secret: "another secret of enough bytes" }) },
    "expired": { token: sign({ ...valid, exp: now - 60 }) },
    "not yet valid": { token: sign({ ...valid, nbf: now + 600 }) },
    "HS512": { token: sign(valid, { alg: "HS512" }) },
    "alg none": { token: sign(valid, { alg: "none" }) },
    "no exp": { token: sign({ sub: "7201", role: "vendor" }) },
    "no sub": { token: sign({ role: "vendor", exp: now + 600 }) },
    "exp a string": { token: sign({ ...valid, exp: String(now + 600) }) },
    "sub a number": { token: sign({ ...valid, sub: 7201 }) },
    "sub not numeric": { token: sign({ ...valid, sub: "abc" }) },
    "sub zero": { token: sign({ ...valid, sub: "0" }) },
    "role admin": { token: sign({ ...valid, role: "admin" }) },
  };
  for (const [name, auth] of Object.entries(cases)) {
    const refusals = await Promise.all([stack.bridge, stack.peer].map((server) =>
      connect(server, { auth }).then(
        (socket) => {
          socket.close();
          return "connected";
        },
        (error) => JSON.parse(error.message),
      )));
    assert.equal(refusals[0].statusCode, 401, `${name}: ${JSON.stringify(refusals[0])}`);
    assert.deepEqual(refusals[1], refusals[0], name);
  }
  // And a good one signed here connects to both.
  for (const server of [stack.bridge, stack.peer]) {
    const socket = await connect(server, { auth: { token: sign(valid) } });
    socket.close();
  }
});
