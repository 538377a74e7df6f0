// The inbox lifecycle over Socket.IO, on both transports: categories and
// their exact counts (`unreadCount.byCategory`), archive and the views,
// mark-all, collapsing updates, action buttons, and two tabs of one user
// agreeing on each without a reload.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, request, toStruct } from "./harness.js";

const stack = useStack();

const counts = (socket) => events(socket, "unreadCount").at(-1)?.data;
const countIs = (socket, count, byCategory) => {
  const last = counts(socket);
  return last?.count === count && JSON.stringify(last.byCategory) === JSON.stringify(byCategory);
};
const updated = (socket, id, field, value) =>
  events(socket, "notificationUpdated").some((u) => u.data.ids.includes(id) && u.data[field] === value);

async function createIn(vendorId, type, category) {
  return stack.core.create({ vendorId, type, content: toStruct({ type }), ...(category ? { category } : {}) });
}

test("categories, archive and mark-all: counts by category exact, both tabs agree", async () => {
  const vendor = 451;
  const placed = await createIn(vendor, "order:placed");
  const packed = await createIn(vendor, "order:packed");
  const upload = await createIn(vendor, "product:upload");
  const payout = await createIn(vendor, "settlement", "payment");
  assert.equal(placed.category, "order", "the category defaults to the type's prefix");
  assert.equal(payout.category, "payment", "a named category is kept");

  const auth = { token: token({ vendor }) };
  const websocket = await connect(stack.bridge, { auth, transports: ["websocket"] });
  const polling = await connect(stack.bridge, { auth, transports: ["polling"] });
  const tabs = [websocket, polling];
  try {
    for (const tab of tabs) {
      await until(tab, () => countIs(tab, 4, { order: 2, payment: 1, product: 1 }), "the first counts");
      const [inbox] = events(tab, "offlineNotifications");
      assert.deepEqual(inbox.data.items.map((n) => n.category), ["payment", "product", "order", "order"]);
      assert.equal(inbox.data.items[0].archivedAt, null);
    }

    // A category's page.
    const orders = await request(websocket, "offlineNotifications", { category: "order" });
    assert.deepEqual(orders.data.items.map((n) => n.id), [packed.id, placed.id]);
    assert.equal(orders.data.pagination.totalRecords, 2);

    // Archive in one tab: gone from the inbox and its counts, in both tabs.
    const archived = await request(polling, "archive", { ids: [upload.id] });
    assert.deepEqual(archived.data, { updated: 1 });
    for (const tab of tabs) {
      await until(tab, () => updated(tab, upload.id, "archived", true), "the archive, in every tab");
      await until(tab, () => countIs(tab, 3, { order: 2, payment: 1 }), "the counts after the archive");
    }
    const update = events(websocket, "notificationUpdated").find((u) => u.data.archived === true);
    assert.equal(update.data.status, undefined, "only what changed: the status did not");
    const shelf = await request(websocket, "offlineNotifications", { view: "ARCHIVED" });
    assert.deepEqual(shelf.data.items.map((n) => n.id), [upload.id]);
    assert.match(shelf.data.items[0].archivedAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
    const all = await request(websocket, "offlineNotifications", { view: "ALL" });
    assert.equal(all.data.pagination.totalRecords, 4);
    const inbox = await request(websocket, "offlineNotifications", {});
    assert.equal(inbox.data.pagination.totalRecords, 3);

    // Mark all of a category read, up to the seq the tab saw.
    const allOrders = await request(websocket, "markAllAsRead", { category: "order", upToSeq: Number(packed.seq) });
    assert.deepEqual(allOrders.data, { updated: 2 });
    for (const tab of tabs) {
      await until(tab, () => updated(tab, placed.id, "status", "READ"), "the mark-all, in every tab");
      await until(tab, () => countIs(tab, 1, { payment: 1 }), "the counts after the mark-all");
    }

    // Unarchive: back in the inbox, counted again.
    await request(polling, "archive", { ids: [upload.id], archived: false });
    for (const tab of tabs) {
      await until(tab, () => countIs(tab, 2, { payment: 1, product: 1 }), "the counts after the unarchive");
    }

    // A backend's mark-all over gRPC: every tab hears it, the count is 0.
    const done = await stack.core.call("MarkAllNotifications", { vendorId: vendor, status: "READ" });
    assert.equal(done.updated, 2);
    for (const tab of tabs) await until(tab, () => countIs(tab, 0, {}), "the count after the backend's mark-all");
    const byGrpc = await stack.core.call("GetUnreadCounts", { vendorId: vendor });
    assert.equal(Number(byGrpc.count ?? 0), 0);
    assert.deepEqual(byGrpc.byCategory ?? {}, {});
  } finally {
    for (const tab of tabs) tab.close();
  }
});

test("bad input to the new events is a 400 naming the field, through the ack and appError", async () => {
  const socket = await connect(stack.bridge, { auth: { token: token({ customer: 452 }) } });
  try {
    await until(socket, () => events(socket, "unreadCount").length > 0, "the first count");
    const cases = [
      ["archive", { ids: ["not-an-id"] }, /ids\[0\]/],
      ["archive", { ids: [] }, /ids/],
      ["archive", { ids: ["68553796000745d4620985bc"], archived: "yes" }, /archived/],
      ["markAllAsRead", { upToSeq: 0 }, /upToSeq/],
      ["markAllAsRead", { category: "Not A Category" }, /category/],
      ["offlineNotifications", { view: "TRASH" }, /view/],
      ["offlineNotifications", { category: 7 }, /category/],
      ["completeAction", { actionId: "accept" }, /^id/],
      ["completeAction", { id: "nope", actionId: "accept" }, /^id/],
      ["completeAction", { id: "68553796000745d4620985bc" }, /^actionId/],
      ["completeAction", { id: "68553796000745d4620985bc", actionId: "x".repeat(33) }, /^actionId/],
      ["completeAction", { id: "68553796000745d4620985bc", actionId: 7 }, /^actionId/],
      ["completeAction", "accept", /payload/],
    ];
    for (const [event, payload, field] of cases) {
      const before = events(socket, "appError").length;
      const ack = await request(socket, event, payload);
      assert.equal(ack.error, true, `${event} ${JSON.stringify(payload)}`);
      assert.equal(ack.statusCode, 400);
      assert.match(ack.message, field);
      await until(socket, () => events(socket, "appError").length > before, `appError for ${event}`);
    }
  } finally {
    socket.close();
  }
});

test("an order's updates collapse into one item and an action taken in one tab shows in the other", async () => {
  const customer = 453;
  const update = (status, extra = {}) =>
    stack.core.create({
      customerId: customer,
      type: `order:${status}`,
      content: toStruct({ order: 881, status }),
      collapseKey: "order-881",
      ...extra,
    });
  const placed = await update("placed");
  const auth = { token: token({ customer }) };
  const websocket = await connect(stack.bridge, { auth, transports: ["websocket"] });
  const polling = await connect(stack.bridge, { auth, transports: ["polling"] });
  const tabs = [websocket, polling];
  try {
    for (const tab of tabs) await until(tab, () => countIs(tab, 1, { order: 1 }), "the first count");

    // placed → packed: the new one names the old, the old leaves, the count stays 1.
    const countsBefore = tabs.map((tab) => events(tab, "unreadCount").length);
    const packed = await update("packed", {
      actions: [
        { id: "cancel", label: "Cancel order" },
        { id: "track", label: "Track parcel", url: "https://shop.example/track/881" },
      ],
    });
    assert.equal(packed.replaces, placed.id);
    for (const tab of tabs) {
      await until(
        tab,
        () => events(tab, "notification").some((n) => n.id === packed.id),
        "the update, live"
      );
      await until(tab, () => updated(tab, placed.id, "replacedBy", packed.id), "the old one replaced");
      const live = events(tab, "notification").find((n) => n.id === packed.id);
      assert.equal(live.replaces, placed.id);
      assert.equal(live.collapseKey, "order-881");
      assert.deepEqual(live.actions, [
        { id: "cancel", label: "Cancel order" },
        { id: "track", label: "Track parcel", url: "https://shop.example/track/881" },
      ]);
      assert.equal(live.actionTaken, null);
    }
    // A count that grew would have come before the replacedBy update (the
    // bridge sends a count only when it changes, in order).
    for (const [n, tab] of tabs.entries()) {
      const since = events(tab, "unreadCount").slice(countsBefore[n]).map((c) => c.data.count);
      assert.ok(since.every((count) => count === 1), `the count never grew: ${since}`);
      assert.ok(countIs(tab, 1, { order: 1 }));
    }
    const inbox = await request(polling, "offlineNotifications", { view: "ALL" });
    assert.deepEqual(inbox.data.items.map((n) => n.id), [packed.id], "the replaced one is listed nowhere");

    // An unknown action is a 400 naming it; the right one reads it, once.
    const unknown = await request(websocket, "completeAction", { id: packed.id, actionId: "refund" });
    assert.equal(unknown.statusCode, 400);
    assert.match(unknown.message, /^actionId/);
    const done = await request(websocket, "completeAction", { id: packed.id, actionId: "cancel" });
    assert.equal(done.error, false);
    assert.equal(done.data.id, packed.id);
    assert.equal(done.data.status, "READ");
    assert.equal(done.data.actionTaken.id, "cancel");
    for (const tab of tabs) {
      await until(
        tab,
        () =>
          events(tab, "notificationUpdated").some(
            (u) => u.data.ids.includes(packed.id) && u.data.actionTaken?.id === "cancel" && u.data.status === "READ"
          ),
        "the action, in every tab"
      );
      await until(tab, () => countIs(tab, 0, {}), "the count after the action");
    }
    const again = await request(polling, "completeAction", { id: packed.id, actionId: "track" });
    assert.equal(again.error, true, "a second completion is refused");
    assert.equal(again.statusCode, 400);
    assert.match(again.message, /already/);

    // Once read, the next update does not replace it.
    const shipped = await update("shipped");
    assert.equal(shipped.replaces ?? "", "");
    for (const tab of tabs) await until(tab, () => countIs(tab, 1, { order: 1 }), "the next update counts");
  } finally {
    for (const tab of tabs) tab.close();
  }
});
