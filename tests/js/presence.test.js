// Two sockets of one user: both get notifications; the room peer hears
// userIsOffline once, only when the last socket closes.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, sleep } from "./harness.js";

const stack = useStack();

test("userIsOnline on the first socket, userIsOffline once after the last", async () => {
  await stack.core.call("JoinRoom", { room: "order:881", vendorId: 5 });
  await stack.core.call("JoinRoom", { room: "order:881", customerId: 12 });
  await stack.core.call("JoinRoom", { room: "order:882", vendorId: 5 });
  await stack.core.call("JoinRoom", { room: "order:882", customerId: 12 });
  const peer = await connect(stack.bridge, { auth: { token: token({ customer: 12 }) } });
  await until(peer, () => events(peer, "unreadCount").length, "peer ready");

  const first = await connect(stack.bridge, { auth: { token: token({ vendor: 5 }) } });
  const second = await connect(stack.bridge, { auth: { token: token({ vendor: 5 }) }, transports: ["polling"] });
  try {
    await until(peer, () => events(peer, "userIsOnline").length, "userIsOnline");
    const [online] = events(peer, "userIsOnline");
    assert.equal(online.error, false);
    assert.equal(online.statusCode, 200);
    assert.equal(online.data.vendorId, 5);
    assert.equal(online.data.customerId, null);

    await until(first, () => events(first, "unreadCount").length, "first ready");
    await until(second, () => events(second, "unreadCount").length, "second ready");
    const created = await stack.core.create({ vendorId: 5 });
    await until(first, () => events(first, "notification").some((n) => n.id === created.id), "first gets it");
    await until(second, () => events(second, "notification").some((n) => n.id === created.id), "second gets it");

    first.close();
    await sleep(800);
    assert.equal(events(peer, "userIsOffline").length, 0, "one socket left: still online");

    second.close();
    await until(peer, () => events(peer, "userIsOffline").length, "userIsOffline");
    await sleep(800);
    const offline = events(peer, "userIsOffline");
    assert.equal(offline.length, 1, "exactly once, though they share two rooms");
    assert.equal(offline[0].error, false);
    assert.equal(offline[0].message, "User has gone offline");
    assert.equal(offline[0].statusCode, 200);
    assert.equal(offline[0].data.vendorId, 5);
    assert.equal(offline[0].data.customerId, null);
    assert.match(offline[0].data.lastSeenAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    assert.equal(events(peer, "userIsOnline").length, 1);
  } finally {
    first.close();
    second.close();
    peer.close();
  }
});
