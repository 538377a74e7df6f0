// Delivery receipts: a client's acks become DELIVERED in the core, and a
// bridge stopped with SIGTERM records every ack it received before it exits.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { Core, Bridge, token, connect, until, events, toStruct, metric, sleep } from "./harness.js";

const core = await Core.start();
after(() => core.stop());

/** Every notification in a vendor's inbox. */
async function inbox(vendorId) {
  const all = [];
  for (let page = 1; ; page++) {
    const response = await core.call("ListOffline", { vendorId, page, limit: 100 });
    all.push(...(response.items ?? []));
    if (!response.pagination?.hasNext) return all;
  }
}

test("acks received before a SIGTERM are recorded before the bridge exits", { timeout: 60_000 }, async () => {
  const bridge = await Bridge.start(core);
  const vendor = 401;
  const pending = [];
  const socket = await connect(bridge, {
    auth: { token: token({ vendor }) },
    listeners: { notification: (_n, ack) => pending.push(ack) },
  });
  await until(socket, () => events(socket, "unreadCount").length, "ready");
  const total = 300;
  for (let i = 0; i < total; i++) {
    await core.create({ vendorId: vendor, content: toStruct({ message: `n${i}` }) });
  }
  await until(socket, () => events(socket, "notification").length === total, `${total} notifications`);
  // The core is frozen, so the receipts cannot be recorded yet; every ack
  // reaches the bridge, which is then asked to stop.
  core.child.kill("SIGSTOP");
  try {
    for (const ack of pending) ack();
    while (metric(await bridge.metrics(), "notify_bridge_acks_total") < total) await sleep(5);
    const exited = bridge.terminate();
    const early = await Promise.race([exited.then(() => true), sleep(1000).then(() => false)]);
    if (early) {
      // It left while its receipts could not be recorded: they are lost.
      await core.kill();
      await core.restart();
    } else {
      core.child.kill("SIGCONT");
      assert.equal(await exited, 0);
    }
  } finally {
    core.child.kill("SIGCONT");
  }
  const statuses = (await inbox(vendor)).map((n) => n.status);
  assert.equal(statuses.length, total);
  const delivered = statuses.filter((s) => s === "DELIVERED").length;
  assert.equal(delivered, total, `${delivered} of ${total} acks recorded`);
});
