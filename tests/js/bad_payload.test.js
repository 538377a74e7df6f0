// Bad client payloads: a 400 envelope through the ack, an appError emit,
// and the socket stays connected and usable.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, request } from "./harness.js";

const stack = useStack();

const cases = [
  ["offlineNotifications", { page: 0 }, /page/],
  ["offlineNotifications", { page: -3 }, /page/],
  ["offlineNotifications", { page: "two" }, /page/],
  ["offlineNotifications", { page: 1.5 }, /page/],
  ["offlineNotifications", { limit: 0 }, /limit/],
  ["offlineNotifications", { limit: 101 }, /limit/],
  ["offlineNotifications", { limit: 1e12 }, /limit/],
  ["offlineNotifications", "page 2", /object/],
  ["offlineNotifications", [1, 20], /object/],
  ["markAsRead", {}, /ids/],
  ["markAsRead", { ids: "68553796000745d4620985bc" }, /ids/],
  ["markAsRead", { ids: [] }, /ids/],
  ["markAsRead", { ids: ["nope"] }, /ids\[0\]/],
  ["markAsRead", { ids: [42] }, /ids\[0\]/],
  ["markAsRead", { ids: Array(1001).fill("68553796000745d4620985bc") }, /ids/],
  ["markAsRead", 17, /object/],
  ["markAllAsRead", { upToSeq: 0 }, /upToSeq/],
  ["markAllAsRead", { upToSeq: "9" }, /upToSeq/],
  ["markAllAsRead", { category: "Not One" }, /category/],
  ["markAllAsRead", "all", /object/],
  ["archive", { ids: ["nope"] }, /ids\[0\]/],
  ["archive", { ids: [] }, /ids/],
  ["archive", { ids: ["68553796000745d4620985bc"], archived: 1 }, /archived/],
  ["offlineNotifications", { view: "TRASH" }, /view/],
  ["offlineNotifications", { category: "A B" }, /category/],
  ["completeAction", {}, /^id/],
  ["completeAction", { id: "nope", actionId: "accept" }, /^id/],
  ["completeAction", { id: "68553796000745d4620985bc" }, /^actionId/],
  ["completeAction", { id: "68553796000745d4620985bc", actionId: "" }, /^actionId/],
  ["completeAction", { id: "68553796000745d4620985bc", actionId: "a".repeat(33) }, /^actionId/],
  ["completeAction", [1], /object/],
];

test("each bad payload gets 400 and the socket stays usable", async () => {
  const kept = await stack.core.create({ vendorId: 9, actions: [{ id: "accept", label: "Accept" }] });
  cases.push(["completeAction", { id: kept.id, actionId: "refund" }, /^actionId/]);
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor: 9 }) } });
  try {
    await until(socket, () => events(socket, "unreadCount").length, "ready");
    for (const [event, payload, field] of cases) {
      const before = events(socket, "appError").length;
      const ack = await request(socket, event, payload);
      const label = `${event} ${JSON.stringify(payload).slice(0, 60)}`;
      assert.equal(ack.error, true, label);
      assert.equal(ack.statusCode, 400, label);
      assert.match(ack.message, field, label);
      await until(socket, () => events(socket, "appError").length > before, `appError for ${label}`);
      const appError = events(socket, "appError").at(-1);
      assert.deepEqual(appError, ack, label);
      assert.ok(socket.connected, label);
    }
    // Still usable, and nothing changed.
    const page = await request(socket, "offlineNotifications", { page: 1, limit: 5 });
    assert.equal(page.statusCode, 200);
    assert.deepEqual(page.data.items.map((n) => n.id), [kept.id]);
    const stored = await stack.core.call("GetNotification", { id: kept.id });
    assert.equal(stored.status, "SENT");
    assert.equal(stored.actionTaken ?? null, null);
    assert.equal(stored.archivedAt ?? "", "");
  } finally {
    socket.close();
  }
});
