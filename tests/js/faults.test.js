// Faults under load: kill -9 of the core and of the bridge while several
// clients create notifications; nothing acknowledged is lost, seqs have no
// gap, and every socket ends up with every one of its notifications.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, request, sleep } from "./harness.js";

const stack = useStack();
const USERS = [81, 82, 83];

/** Creates round-robin over USERS from `clients` loops until `stop()`. */
function load(clients = 4) {
  let running = true;
  const acked = [];
  let refused = 0;
  const loops = Array.from({ length: clients }, async (_, c) => {
    for (let n = 0; running; n++) {
      const vendorId = USERS[(c + n) % USERS.length];
      try {
        acked.push(await stack.core.create({ vendorId }));
      } catch {
        refused++;
        await sleep(50);
      }
    }
  });
  return { acked, stop: async () => { running = false; await Promise.all(loops); return refused; } };
}

/** Every stored notification of a vendor, through ListOffline pages. */
async function stored(vendorId) {
  const all = [];
  for (let page = 1; ; page++) {
    const response = await stack.core.call("ListOffline", { vendorId, page, limit: 100 });
    all.push(...(response.items ?? []));
    if (!response.pagination?.hasNext) return all;
  }
}

/** Ids a socket has seen, live or in any offline page. */
function seen(socket) {
  return new Set([
    ...events(socket, "notification").map((n) => n.id),
    ...events(socket, "offlineNotifications").flatMap((p) => p.data.items.map((n) => n.id)),
  ]);
}

test("kill -9 of the core under load loses nothing acknowledged", { timeout: 60_000 }, async () => {
  const sockets = await Promise.all(USERS.map((vendor) => connect(stack.bridge, { auth: { token: token({ vendor }) } })));
  for (const s of sockets) await until(s, () => events(s, "unreadCount").length, "ready");
  const traffic = load();
  await sleep(800);
  await stack.core.kill();
  await sleep(500);
  await stack.core.restart();
  await sleep(800);
  const refused = await traffic.stop();
  assert.ok(traffic.acked.length > 0 && refused > 0, `acked ${traffic.acked.length}, refused ${refused}`);

  for (const [index, vendor] of USERS.entries()) {
    const rows = await stored(vendor);
    const ids = new Set(rows.map((n) => n.id));
    for (const n of traffic.acked.filter((a) => a.vendorId === String(vendor))) {
      assert.ok(ids.has(n.id), `acknowledged ${n.id} is stored`);
    }
    const seqs = rows.map((n) => Number(n.seq)).sort((a, b) => a - b);
    assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), "no gap");
    const socket = sockets[index];
    await until(socket, () => rows.every((n) => seen(socket).has(n.id)), `socket of vendor ${vendor} has all ${rows.length}`, 20_000);
    assert.ok(socket.connected);
  }
  for (const s of sockets) s.close();
});

test("kill -9 of the bridge: clients reconnect by themselves and get what they missed", { timeout: 60_000 }, async () => {
  const sockets = await Promise.all(USERS.map((vendor) =>
    connect(stack.bridge, { auth: { token: token({ vendor }) }, reconnection: true })));
  for (const s of sockets) await until(s, () => events(s, "unreadCount").length, "ready");
  // Start from an empty inbox so every page below is this test's.
  for (const s of sockets) {
    for (;;) {
      const page = await request(s, "offlineNotifications", { page: 1, limit: 100 });
      if (page.data.items.length === 0) break;
      await request(s, "markAsRead", { ids: page.data.items.map((n) => n.id) });
    }
  }
  const reconnected = sockets.map((s) => new Promise((resolve) => s.io.once("reconnect", resolve)));
  const traffic = load(3);
  await sleep(500);
  await stack.bridge.kill();
  await sleep(1000);
  await stack.bridge.restart();
  await Promise.all(reconnected);
  await sleep(500);
  await traffic.stop();

  for (const [index, vendor] of USERS.entries()) {
    const socket = sockets[index];
    const mine = traffic.acked.filter((a) => a.vendorId === String(vendor)).map((n) => n.id);
    // Live, the connect-time page, and the rest of the unread pages.
    const have = seen(socket);
    for (let page = 1; mine.some((id) => !have.has(id)); page++) {
      const answer = await request(socket, "offlineNotifications", { page, limit: 100 });
      assert.equal(answer.statusCode, 200, JSON.stringify(answer));
      for (const n of answer.data.items) have.add(n.id);
      if (!answer.data.pagination.hasNext) break;
    }
    const missing = mine.filter((id) => !have.has(id));
    assert.deepEqual(missing, [], `vendor ${vendor} missed nothing`);
  }
  for (const s of sockets) s.close();
});
