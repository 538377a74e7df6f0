// Scheduled sends on both stores: a notification with `sendAt` is PENDING
// (readable by id, in no list, count or stream) until then, goes out live
// with the next seq when due, can be cancelled while pending and not after,
// meets the recipient's preferences as they are when it goes out, and one
// due while the core is down (kill -9) goes out right after it starts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, events, until, token, sleep, eachStore } from "./harness.js";

const at = (ms) => new Date(Date.now() + ms).toISOString();

eachStore((store, stack) => {

  test(`pending until sendAt, then live with the next seq; cancelled ones never go (${store})`, async () => {
    const { core, bridge } = stack;
    const vendor = 5101;
    await core.create({ vendorId: vendor });
    const socket = await connect(bridge, { auth: { token: token({ vendor }) } });
    try {
      await until(socket, () => events(socket, "unreadCount").length, "first unreadCount");
      const sendAt = at(1500);
      const pending = await core.create({ vendorId: vendor, type: "order:reminder", sendAt });
      assert.equal(pending.status, "PENDING");
      assert.ok(!pending.seq, "no seq yet");
      assert.equal(pending.sendAt, sendAt);
      const cancelled = await core.create({ vendorId: vendor, type: "order:reminder", sendAt: at(1200) });
      const read = await core.call("GetNotification", { id: pending.id });
      assert.equal(read.status, "PENDING");
      const inbox = await core.call("ListOffline", { vendorId: vendor });
      assert.equal(inbox.items.length, 1, "listed nowhere while pending");
      assert.equal((await core.call("GetUnreadCounts", { vendorId: vendor })).count, "1");

      const gone = await core.call("CancelNotification", { id: cancelled.id });
      assert.equal(gone.id, cancelled.id);
      assert.equal(gone.status, "PENDING");
      await assert.rejects(core.call("CancelNotification", { id: cancelled.id }), (e) => e.code === 5);

      await until(socket, () => events(socket, "notification").length, "the scheduled one, live", 15_000);
      const [live] = events(socket, "notification");
      const arrived = socket.received.find((r) => r.event === "notification").at;
      assert.equal(live.id, pending.id, "the cancelled one, due first, never came");
      assert.equal(live.status, "SENT");
      assert.ok(arrived >= Date.parse(sendAt), "not before its time");
      const sent = await core.call("GetNotification", { id: pending.id });
      assert.equal(sent.seq, "2", "the next seq, taken when sent");
      assert.ok(!sent.sendAt);
      await assert.rejects(
        core.call("CancelNotification", { id: pending.id }),
        (e) => e.code === 9 && /not pending/.test(e.details),
      );
      await assert.rejects(core.call("CancelNotification", { id: "68553796000745d4620985bc" }), (e) => e.code === 5);
      await assert.rejects(
        core.create({ vendorId: vendor, sendAt: "2020-01-01T00:00:00Z" }),
        (e) => e.code === 3 && /^sendAt: must be in the future/.test(e.details),
      );
      await assert.rejects(
        core.create({ vendorId: vendor, sendAt: at(5000), expiresAt: at(4000) }),
        (e) => e.code === 3 && /^expiresAt: must be after sendAt/.test(e.details),
      );
      assert.equal(events(socket, "notification").length, 1);
    } finally {
      socket.close();
    }
  });

  test(`preferences apply when it goes out, not when it was scheduled (${store})`, async () => {
    const { core, bridge } = stack;
    const customer = 5201;
    const socket = await connect(bridge, { auth: { token: token({ customer }) } });
    try {
      await until(socket, () => events(socket, "unreadCount").length, "first unreadCount");
      const sale = await core.create({ customerId: customer, type: "marketing:sale", sendAt: at(1000) });
      assert.ok(!sale.suppressed, "pending: decided when it goes out");
      const order = await core.create({ customerId: customer, type: "order:shipped", sendAt: at(1300) });
      await core.call("SetPreferences", { customerId: customer, rules: [{ category: "marketing", channel: "PUSH", enabled: false }] });
      // The sale fell due first: by the time the order is out, it was decided.
      await until(socket, () => events(socket, "notification").length, "the order", 15_000);
      assert.deepEqual(events(socket, "notification").map((n) => n.id), [order.id]);
      await assert.rejects(core.call("GetNotification", { id: sale.id }), (e) => e.code === 5, "dropped, stored nowhere");
    } finally {
      socket.close();
    }
  });

  test(`one due while the core is down (kill -9) goes out right after it starts (${store})`, async () => {
    const { core, bridge } = stack;
    const vendor = 5301;
    const socket = await connect(bridge, { auth: { token: token({ vendor }) }, reconnection: true });
    try {
      await until(socket, () => events(socket, "unreadCount").length, "first unreadCount");
      const sendAt = at(800);
      const pending = await core.create({ vendorId: vendor, type: "payment:due", sendAt });
      const later = await core.create({ vendorId: vendor, type: "payment:due", sendAt: at(60_000) });
      await core.kill();
      await sleep(Math.max(0, Date.parse(sendAt) - Date.now()) + 700);
      const started = Date.now();
      await core.restart();
      await until(socket, () => events(socket, "notification").some((n) => n.id === pending.id), "the overdue one", 20_000);
      const sent = await core.call("GetNotification", { id: pending.id });
      assert.equal(sent.status === "SENT" || sent.status === "DELIVERED", true, sent.status);
      assert.equal(sent.seq, "1");
      assert.ok(Date.now() - started < 20_000);
      // The one not yet due is still pending, exactly once.
      assert.equal((await core.call("GetNotification", { id: later.id })).status, "PENDING");
      assert.equal(events(socket, "notification").filter((n) => n.id === pending.id).length, 1);
      await core.call("CancelNotification", { id: later.id });
    } finally {
      socket.close();
    }
  });
});
