// Preferences by category × channel, on both stores: a socket turns a pair
// off with setPreferences (getPreferences reads it back, a second tab too),
// creates of that pair are answered `suppressed`, stored nowhere and never
// reach the socket, other pairs and `critical` ones still do, and
// CreateNotifications says how many it skipped. Bad rules get 400 and
// change nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, events, until, request, token, eachStore } from "./harness.js";


eachStore((store, stack) => {

  test(`a pair turned off is suppressed, others and critical ones are delivered (${store})`, async () => {
    const { core, bridge } = stack;
    const customer = 4101;
    const jwt = token({ customer });
    const tab = await connect(bridge, { auth: { token: jwt } });
    const other = await connect(bridge, { auth: { token: jwt }, transports: ["polling"] });
    try {
      await until(tab, () => events(tab, "unreadCount").length, "first unreadCount");
      const off = { category: "marketing", channel: "PUSH", enabled: false };
      const set = await request(tab, "setPreferences", { rules: [off, { category: "marketing", channel: "EMAIL", enabled: false }] });
      assert.equal(set.statusCode, 200);
      assert.deepEqual(set.data.rules, [
        { category: "marketing", channel: "PUSH", enabled: false },
        { category: "marketing", channel: "EMAIL", enabled: false },
      ]);
      // The other tab (the other transport) reads the same.
      assert.deepEqual((await request(other, "getPreferences")).data.rules, set.data.rules);
      // Back on for e-mail: the list holds what is off.
      const now = await request(tab, "setPreferences", { rules: [{ category: "marketing", channel: "EMAIL", enabled: true }] });
      assert.deepEqual(now.data.rules, [off]);

      const sale = { customerId: customer, type: "marketing:sale", channel: "PUSH" };
      const skipped = await core.create(sale);
      assert.equal(skipped.suppressed, true);
      assert.ok(!skipped.id, "no id: nothing stored");
      assert.ok(!skipped.seq, "no seq");
      assert.ok(!skipped.status, "no status");
      assert.equal(skipped.category, "marketing");
      const inApp = await core.create({ ...sale, channel: "IN_APP" });
      const critical = await core.create({ ...sale, critical: true });
      assert.ok(!inApp.suppressed && inApp.id);
      assert.ok(!critical.suppressed && critical.id);
      assert.equal(critical.seq, "2", "the suppressed one took no seq");
      for (const socket of [tab, other]) {
        await until(socket, () => events(socket, "notification").length >= 2, "two live notifications");
      }
      const delivered = events(tab, "notification").map((n) => n.id);
      assert.deepEqual(delivered.sort(), [inApp.id, critical.id].sort());

      // A batch: the muted recipient is skipped and counted.
      const batch = await core.call("CreateNotifications", {
        recipients: [{ customerId: 4102 }, { customerId: customer }, { vendorId: 4101 }],
        type: "marketing:sale",
        channel: "PUSH",
        content: skipped.content,
      });
      assert.equal(batch.suppressed, "1");
      assert.deepEqual(batch.items.map((n) => n.suppressed ?? false), [false, true, false]);
      assert.deepEqual(batch.items.map((n) => n.customerId ?? null), ["4102", String(customer), null]);
      const counts = await core.call("GetUnreadCounts", { customerId: customer });
      assert.equal(counts.count, "2", "only what was delivered is counted");
      assert.equal(events(tab, "notification").length, 2, "nothing more reached the socket");
    } finally {
      tab.close();
      other.close();
    }
  });

  test(`bad rules get 400 and change nothing (${store})`, async () => {
    const { core, bridge } = stack;
    const customer = 4201;
    const socket = await connect(bridge, { auth: { token: token({ customer }) } });
    try {
      await request(socket, "setPreferences", { rules: [{ category: "order", channel: "SMS", enabled: false }] });
      const cases = [
        [undefined, /rules: required/],
        [{ rules: [] }, /rules: must list 1 to 100/],
        [{ rules: "order" }, /rules: required/],
        [{ rules: [{ category: "Order!", channel: "PUSH", enabled: false }] }, /rules\[0\]\.category/],
        [{ rules: [{ channel: "PUSH", enabled: false }] }, /rules\[0\]\.category: required/],
        [{ rules: [{ category: "order", channel: "FAX", enabled: false }] }, /rules\[0\]\.channel/],
        [{ rules: [{ category: "order", enabled: false }] }, /rules\[0\]\.channel: required/],
        [{ rules: [{ category: "order", channel: "PUSH" }] }, /rules\[0\]\.enabled: required/],
        [{ rules: [{ category: "order", channel: "PUSH", enabled: "no" }] }, /rules\[0\]\.enabled/],
        [{ rules: [{ category: "a", channel: "PUSH", enabled: false }, 7] }, /rules\[1\]: must be an object/],
        [{ rules: Array.from({ length: 101 }, () => ({ category: "a", channel: "PUSH", enabled: false })) }, /1 to 100/],
      ];
      for (const [payload, says] of cases) {
        const answer = await request(socket, "setPreferences", payload);
        assert.equal(answer.statusCode, 400, JSON.stringify(payload));
        assert.match(answer.message, says);
      }
      const { data } = await request(socket, "getPreferences");
      assert.deepEqual(data.rules, [{ category: "order", channel: "SMS", enabled: false }]);
      // The core says the same over gRPC, naming the field.
      await assert.rejects(
        core.call("SetPreferences", { customerId: customer, rules: [{ category: "order", channel: "PUSH" }] }),
        (error) => error.code === 3 && /rules\[0\]\.enabled: required/.test(error.details),
      );
    } finally {
      socket.close();
    }
  });
});
