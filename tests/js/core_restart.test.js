// The core killed, kept down for 10 s and restarted while sockets stay
// connected: appError 503, /readyz 503, then everything created before and
// after arrives.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, sleep } from "./harness.js";

const stack = useStack();

async function readyz() {
  return (await fetch(`${stack.bridge.url}/readyz`)).status;
}

async function waitReadyz(status) {
  for (let i = 0; i < 100; i++) {
    if ((await readyz()) === status) return;
    await sleep(100);
  }
  assert.fail(`/readyz never became ${status}`);
}

test("sockets survive the core down for 10 s and lose nothing", { timeout: 60_000 }, async () => {
  const sockets = await Promise.all([
    connect(stack.bridge, { auth: { token: token({ vendor: 21 }) } }),
    connect(stack.bridge, { auth: { token: token({ vendor: 21 }) }, transports: ["polling"] }),
    connect(stack.bridge, { auth: { token: token({ customer: 22 }) } }),
  ]);
  const [a, b, c] = sockets;
  const ids = sockets.map((s) => s.id);
  let disconnects = 0;
  for (const s of sockets) s.on("disconnect", () => disconnects++);
  try {
    for (const s of sockets) await until(s, () => events(s, "unreadCount").length, "ready");
    await waitReadyz(200);
    const before = [];
    for (let i = 0; i < 5; i++) before.push((await stack.core.create({ vendorId: 21 })).id);
    before.push((await stack.core.create({ customerId: 22 })).id);

    await stack.core.kill();
    for (const s of sockets) {
      await until(s, () => events(s, "appError").some((e) => e.statusCode === 503), "appError 503");
    }
    await waitReadyz(503);
    await sleep(10_000);
    assert.equal(disconnects, 0, "sockets stay connected while the core is down");
    await stack.core.restart();
    await waitReadyz(200);

    const afterIds = [];
    for (let i = 0; i < 5; i++) afterIds.push((await stack.core.create({ vendorId: 21 })).id);
    afterIds.push((await stack.core.create({ customerId: 22 })).id);

    const seen = (s) => new Set([
      ...events(s, "notification").map((n) => n.id),
      ...events(s, "offlineNotifications").flatMap((p) => p.data.items.map((n) => n.id)),
    ]);
    const vendorIds = [...before.slice(0, 5), ...afterIds.slice(0, 5)];
    const customerIds = [before[5], afterIds[5]];
    for (const s of [a, b]) {
      await until(s, () => vendorIds.every((id) => seen(s).has(id)), "every vendor notification");
    }
    await until(c, () => customerIds.every((id) => seen(c).has(id)), "every customer notification");
    assert.equal(disconnects, 0, "no socket was dropped");
    assert.deepEqual(sockets.map((s) => s.id), ids);
    assert.ok(sockets.every((s) => s.connected));
  } finally {
    for (const s of sockets) s.close();
  }
});
