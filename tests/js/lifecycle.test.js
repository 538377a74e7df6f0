// A socket's life on the bridge, under the races that break promises:
// clients gone mid-handshake, handshakes racing the per-user limit, the
// core down or hung while sockets come and go, the database down while a
// socket waits for its inbox, counts racing creates, tokens that expire.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Core, Bridge, OwnPostgres, token, connect, connectAndDrop, until, events, metric, sleep, toStruct } from "./harness.js";

const core = await Core.start();
const bridge = await Bridge.start(core, ["--max-sockets-per-user", "3"]);
after(async () => {
  await bridge.stop();
  await core.stop();
});

/** A core gauge or counter from its /metrics. */
async function coreMetric(target, name) {
  return metric(await (await fetch(target.metricsUrl)).text(), name);
}

/** Waits until `check()` resolves truthy (20 s at most). */
async function eventually(check, what, timeout = 20_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await sleep(100);
  }
  throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
}

/** Room members online, as the core sees them. */
async function onlineIn(target, room) {
  const members = (await target.call("ListRoomMembers", { room })).members ?? [];
  return members.filter((m) => m.online).map((m) => Number(m.vendorId ?? m.customerId));
}

test("clients gone right after the namespace CONNECT leave nobody online", { timeout: 120_000 }, async () => {
  const users = Array.from({ length: 300 }, (_, i) => 10_000 + i);
  for (const vendor of users) await core.call("JoinRoom", { room: "phantoms", vendorId: vendor });
  for (let start = 0; start < users.length; start += 50) {
    await Promise.all(users.slice(start, start + 50).map((vendor) => connectAndDrop(bridge, token({ vendor }))));
  }
  await eventually(async () => (await onlineIn(core, "phantoms")).length === 0, "nobody online at the core");
  await eventually(async () => metric(await bridge.metrics(), "notify_bridge_users") === 0, "no feed left on the bridge");
  assert.equal(metric(await bridge.metrics(), "notify_bridge_sockets"), 0);
  // They are not counted against the socket limit either.
  const socket = await connect(bridge, { auth: { token: token({ vendor: users[0] }) } });
  socket.close();
});

test("handshakes racing each other cannot pass the socket limit together", { timeout: 30_000 }, async () => {
  const vendor = 20_001;
  const attempts = await Promise.allSettled(Array.from({ length: 20 }, () =>
    connect(bridge, { auth: { token: token({ vendor }) } })));
  const accepted = attempts.filter((a) => a.status === "fulfilled").map((a) => a.value);
  const refused = attempts.filter((a) => a.status === "rejected").map((a) => JSON.parse(a.reason.message));
  assert.equal(accepted.length, 3, `at most 3 sockets, ${accepted.length} accepted`);
  assert.ok(refused.every((r) => r.statusCode === 429), JSON.stringify(refused.slice(0, 2)));
  for (const socket of accepted) socket.close();
  await eventually(async () => metric(await bridge.metrics(), "notify_bridge_sockets") === 0, "sockets released");
  const again = await connect(bridge, { auth: { token: token({ vendor }) } });
  again.close();
});

test("sockets that come and go while the core is down or hung leave nothing behind", { timeout: 120_000 }, async () => {
  const ownCore = await Core.start();
  const ownBridge = await Bridge.start(ownCore);
  try {
    const warm = await connect(ownBridge, { auth: { token: token({ vendor: 30_000 }) } });
    await until(warm, () => events(warm, "unreadCount").length, "ready");
    warm.close();
    await eventually(async () => metric(await ownBridge.metrics(), "notify_bridge_users") === 0, "idle");
    const baseline = metric(await ownBridge.metrics(), "notify_tasks");
    assert.ok(baseline > 0, "the bridge reports its tasks");
    for (const outage of ["down", "hung"]) {
      if (outage === "down") await ownCore.kill();
      else ownCore.child.kill("SIGSTOP");
      for (let i = 0; i < 30; i++) {
        const socket = await connect(ownBridge, { auth: { token: token({ vendor: 30_001 + i }) } });
        await sleep(50);
        socket.close();
      }
      await eventually(async () => metric(await ownBridge.metrics(), "notify_bridge_users") === 0, `no feed left (core ${outage})`);
      await eventually(async () => metric(await ownBridge.metrics(), "notify_tasks") <= baseline + 5,
        `tasks back to ${baseline} (core ${outage})`);
      if (outage === "down") await ownCore.restart();
      else ownCore.child.kill("SIGCONT");
    }
    // Nobody of those is online at the core once it answers again.
    for (let i = 0; i < 30; i++) await ownCore.call("JoinRoom", { room: "gone", vendorId: 30_001 + i });
    await eventually(async () => (await onlineIn(ownCore, "gone")).length === 0, "nobody online at the core");
  } finally {
    ownCore.child.kill("SIGCONT");
    await ownBridge.stop();
    await ownCore.stop();
  }
});

test("a call to a hung core is answered with 503 within the call timeout", { timeout: 60_000 }, async () => {
  const ownCore = await Core.start();
  const ownBridge = await Bridge.start(ownCore);
  const socket = await connect(ownBridge, { auth: { token: token({ vendor: 31_000 }) } });
  try {
    await until(socket, () => events(socket, "unreadCount").length, "ready");
    ownCore.child.kill("SIGSTOP");
    const started = Date.now();
    const answer = await socket.timeout(9_000).emitWithAck("markAsRead", { ids: ["68553796000745d4620985bc"] });
    assert.equal(answer.statusCode, 503, JSON.stringify(answer));
    assert.ok(Date.now() - started < 9_000);
  } finally {
    ownCore.child.kill("SIGCONT");
    socket.close();
    await ownBridge.stop();
    await ownCore.stop();
  }
});

test("a socket whose inbox read fails while the database is down gets it once the database is back", { timeout: 90_000 }, async (t) => {
  const server = OwnPostgres.start();
  if (!server) return t.skip("no PostgreSQL");
  const pgCore = await Core.start(["--db-acquire-timeout", "1s"], { databaseUrl: server.database() });
  const pgBridge = await Bridge.start(pgCore);
  const vendor = 32_000;
  const sockets = [];
  try {
    await pgCore.create({ vendorId: vendor, content: toStruct({ message: "before" }) });
    // The user's stream to the core is open …
    const first = await connect(pgBridge, { auth: { token: token({ vendor }) } });
    sockets.push(first);
    await until(first, () => events(first, "unreadCount").length, "first ready");
    // … and stays open while the database goes away; a second socket's
    // inbox cannot be read.
    server.stop();
    const second = await connect(pgBridge, { auth: { token: token({ vendor }) } });
    sockets.push(second);
    await until(second, () => events(second, "appError").some((e) => e.statusCode === 503), "503 while the database is down");
    server.resume();
    await until(second, () => events(second, "offlineNotifications").length, "the inbox once the database is back", 30_000);
    const [page] = events(second, "offlineNotifications");
    assert.equal(page.data.pagination.totalRecords, 1);
    await until(second, () => events(second, "unreadCount").some((c) => c.data.count === 1), "its count");
  } finally {
    for (const s of sockets) s.close();
    await pgBridge.stop();
    await pgCore.stop();
    server.close();
  }
});

test("sockets that connect during a burst of creates end with the store's count", { timeout: 60_000 }, async () => {
  const vendor = 33_000;
  let running = true;
  const burst = (async () => {
    while (running) {
      await Promise.all(Array.from({ length: 5 }, () => core.create({ vendorId: vendor })));
    }
  })();
  const sockets = [];
  try {
    const rounds = 15;
    for (let i = 0; i < rounds; i++) {
      // Three at a time, the per-user limit, closed before the next three.
      const round = await Promise.all(Array.from({ length: 3 }, () => connect(bridge, { auth: { token: token({ vendor }) } })));
      await Promise.all(round.map((s) => until(s, () => events(s, "unreadCount").length, "ready")));
      sockets.push(...round);
      await sleep(100);
      if (i < rounds - 1) {
        for (const s of round) s.close();
        await eventually(async () => metric(await bridge.metrics(), "notify_bridge_sockets") === 0, "closed");
      }
    }
    running = false;
    await burst;
    const total = (await core.call("ListOffline", { vendorId: vendor })).pagination.totalRecords;
    const open = sockets.slice(-3);
    for (const s of open) {
      await until(s, () => events(s, "unreadCount").at(-1)?.data.count === Number(total),
        `the last unreadCount is ${total}`, 5_000);
    }
    // Only creates happened: a count that goes down is an older one
    // replacing a newer one.
    for (const s of sockets) {
      const counts = events(s, "unreadCount").map((c) => c.data.count);
      assert.deepEqual(counts, [...counts].sort((a, b) => a - b), `counts never go back: ${counts}`);
    }
  } finally {
    running = false;
    for (const s of sockets) s.close();
  }
});

test("a socket whose token expires gets appError 401 and is disconnected; a fresh token reconnects it", { timeout: 30_000 }, async () => {
  const vendor = 34_000;
  let fresh = false;
  const socket = await connect(bridge, {
    // The auth callback is asked at every (re)connect: the first time for a
    // token about to expire, then for a fresh one.
    auth: (cb) => cb({ token: token({ vendor, ttl: fresh ? "1h" : "2s" }) }),
  });
  try {
    await until(socket, () => events(socket, "unreadCount").length, "ready");
    const reason = await new Promise((resolve) => socket.once("disconnect", resolve));
    assert.equal(reason, "io server disconnect");
    const expired = events(socket, "appError").find((e) => e.statusCode === 401);
    assert.ok(expired, JSON.stringify(events(socket, "appError")));
    assert.match(expired.message, /token expired/);
    // What the README's snippet does: a server disconnect is not retried by
    // socket.io-client on its own; connect again, with a fresh token.
    fresh = true;
    socket.connect();
    await new Promise((resolve) => socket.once("connect", resolve));
    // Its inbox first: a notification created before the new socket's
    // inbox was read arrives in that inbox, not as a live event.
    await until(socket, () => events(socket, "offlineNotifications").length === 2, "the inbox again");
    const created = await core.create({ vendorId: vendor });
    await until(socket, () => events(socket, "notification").some((n) => n.id === created.id), "live again");
  } finally {
    socket.close();
  }
});
