// Topics on both stores: subscribe and unsubscribe over gRPC, a publish
// answered once recorded with the recipients it will reach, the fan-out
// running in the background (GetFanout counts it) and reaching connected
// subscribers live, once each, with their own seqs; muted subscribers are
// skipped and counted, a critical publish reaches them, the same key
// answers the same fan-out, and bad input names the field.
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, events, until, token, toStruct, sleep, eachStore } from "./harness.js";

const customers = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => ({ customerId: from + i }));

async function finished(core, fanoutId) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const state = await core.call("GetFanout", { fanoutId });
    if (state.done) return state;
    assert.ok(Date.now() < deadline, `fan-out ${fanoutId} did not finish: ${JSON.stringify(state)}`);
    await sleep(50);
  }
}

eachStore((store, stack) => {

  test(`a publish reaches every subscriber once, live for the connected ones (${store})`, async () => {
    const { core, bridge } = stack;
    const topic = `store:7:followers:${store}`;
    let added = 0;
    for (let from = 1; from <= 2500; from += 1000) {
      const answer = await core.call("Subscribe", { topic, recipients: customers(from, Math.min(from + 999, 2500)) });
      added += answer.added ?? 0;
    }
    assert.equal(added, 2500);
    assert.equal((await core.call("Subscribe", { topic, recipients: customers(1, 3) })).added ?? 0, 0, "already subscribed");
    assert.equal((await core.call("Unsubscribe", { topic, recipients: [{ customerId: 2500 }, { customerId: 9999 }] })).removed, 1);
    assert.equal((await core.call("GetTopic", { topic })).subscribers, "2499");
    await core.call("SetPreferences", { customerId: 7, rules: [{ category: "store", channel: "PUSH", enabled: false }] });
    // Customer 1 had one already: the fan-out's is its seq 2.
    await core.create({ customerId: 1 });

    const sockets = [];
    for (const customer of [1, 7, 1200, 2499]) {
      const socket = await connect(bridge, { auth: { token: token({ customer }) } });
      await until(socket, () => events(socket, "unreadCount").length, "first unreadCount");
      sockets.push(socket);
    }
    try {
      const sale = { topic, type: "store:sale", content: toStruct({ message: "20% off today" }), idempotencyKey: "sale-1" };
      const published = await core.call("PublishToTopic", sale);
      assert.equal(published.recipients, "2499");
      assert.match(published.fanoutId, /^[0-9a-f]{24}$/);
      const again = await core.call("PublishToTopic", sale);
      assert.equal(again.fanoutId, published.fanoutId, "the same key, the same fan-out");
      const state = await finished(core, published.fanoutId);
      assert.equal(state.created, "2498");
      assert.equal(state.suppressed, "1");
      assert.equal(state.recipients, "2499");
      assert.equal(state.topic, topic);

      const [first, muted, middle, last] = sockets;
      for (const socket of [first, middle, last]) {
        await until(socket, () => events(socket, "notification").length, "the sale, live");
      }
      assert.equal(events(first, "notification")[0].seq, 2);
      assert.equal(events(middle, "notification")[0].seq, 1);
      assert.equal((await core.call("GetUnreadCounts", { customerId: 2500 })).count ?? "0", "0", "unsubscribed");
      assert.equal((await core.call("GetUnreadCounts", { customerId: 7 })).count ?? "0", "0", "muted");

      // A critical publish reaches the muted one too.
      const alert = await core.call("PublishToTopic", {
        topic, type: "store:security", category: "store", content: toStruct({ message: "Sign-in from a new device" }), critical: true,
      });
      const alerted = await finished(core, alert.fanoutId);
      assert.equal(alerted.created, "2499");
      await until(muted, () => events(muted, "notification").length, "the critical one");
      for (const socket of [first, middle, last]) {
        await until(socket, () => events(socket, "notification").length === 2, "the second publish");
      }
      for (const socket of sockets) {
        const ids = events(socket, "notification").map((n) => n.id);
        assert.equal(new Set(ids).size, ids.length, "no duplicate");
      }
    } finally {
      for (const socket of sockets) socket.close();
    }
  });

  test(`bad topic input names the field (${store})`, async () => {
    const { core, bridge } = stack;
    const refused = async (method, request, field) => {
      await assert.rejects(core.call(method, request), (e) => e.code === 3 && e.details.startsWith(`${field}:`), `${method} ${field}`);
    };
    await refused("Subscribe", { topic: "", recipients: customers(1, 1) }, "topic");
    await refused("Subscribe", { topic: "t", recipients: [] }, "recipients");
    await refused("Subscribe", { topic: "t", recipients: customers(1, 1001) }, "recipients");
    await refused("Subscribe", { topic: "t", recipients: [{ customerId: 1 }, { customerId: 1 }] }, "recipients[1]");
    await refused("Unsubscribe", { topic: "a\u0007b", recipients: customers(1, 1) }, "topic");
    await refused("GetTopic", { topic: "" }, "topic");
    await refused("PublishToTopic", { topic: "t", type: "", content: toStruct({}) }, "type");
    await refused("PublishToTopic", { type: "x", content: toStruct({}) }, "topic");
    await refused("GetFanout", { fanoutId: "nope" }, "fanoutId");
    await assert.rejects(core.call("GetFanout", { fanoutId: "68553796000745d4620985bc" }), (e) => e.code === 5);
    // A topic nobody follows: recorded, done at once, reaching nobody.
    const empty = await core.call("PublishToTopic", { topic: "nobody", type: "x", content: toStruct({}) });
    assert.equal(empty.recipients ?? "0", "0");
    assert.equal((await core.call("GetFanout", { fanoutId: empty.fanoutId })).done, true);
  });
});
