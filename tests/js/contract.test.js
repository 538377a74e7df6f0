// Every server event and payload of the contract, field by field, over both
// transports, with the official socket.io-client.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, request, toStruct, sleep } from "./harness.js";

const stack = useStack();

const ISO_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const NOTIFICATION_KEYS = ["id", "vendorId", "customerId", "type", "channel", "content", "status",
  "priority", "createdAt", "updatedAt"];
const CONTENT = {
  error: false,
  message: "Product has been uploaded successfully",
  data: { id: 63, name: "Mac", price: "22", isAvailable: true, averageRating: 0, rating: 4.5,
    metaData: "{ \"color\": \"red\"}", productImage: [{ id: 63, size: 23678 }], none: null, name2: "Größe ✓" },
};

function assertNotification(n, { vendorId = null, customerId = null } = {}) {
  for (const key of NOTIFICATION_KEYS) assert.ok(key in n, `notification has ${key}`);
  assert.match(n.id, /^[0-9a-f]{24}$/);
  assert.equal(n.vendorId, vendorId);
  assert.equal(n.customerId, customerId);
  assert.equal(typeof n.priority, "number");
  assert.match(n.createdAt, ISO_MS);
  assert.match(n.updatedAt, ISO_MS);
}

for (const transports of [["websocket"], ["polling"]]) {
  test(`connect gives offlineNotifications then unreadCount (${transports})`, async () => {
    const vendor = transports[0] === "websocket" ? 101 : 102;
    const created = await stack.core.create({ vendorId: vendor, content: toStruct(CONTENT) });
    const socket = await connect(stack.bridge, { auth: { token: token({ vendor }) }, transports });
    try {
      await until(socket, () => events(socket, "unreadCount").length, "unreadCount");
      const [offline] = events(socket, "offlineNotifications");
      assert.deepEqual(Object.keys(offline).sort(), ["data", "error", "message", "statusCode"]);
      assert.equal(offline.statusCode, 200);
      assert.equal(offline.error, false);
      assert.equal(offline.message, null);
      assert.deepEqual(offline.data.pagination, {
        currentPage: 1, nextPage: null, prevPage: null, hasNext: false, hasPrev: false,
        totalPages: 1, totalRecords: 1,
      });
      const [item] = offline.data.items;
      assertNotification(item, { vendorId: vendor });
      assert.equal(item.id, created.id);
      assert.equal(item.type, "product:upload");
      assert.equal(item.channel, "PUSH");
      assert.equal(item.status, "SENT");
      assert.equal(item.priority, 1);
      assert.deepEqual(item.content, CONTENT);
      const [unread] = events(socket, "unreadCount");
      assert.deepEqual(unread, {
        statusCode: 200, error: false, message: null, data: { count: 1, byCategory: { product: 1 } },
      });
      assert.ok(socket.received.findIndex((r) => r.event === "offlineNotifications")
        < socket.received.findIndex((r) => r.event === "unreadCount"));

      // Live: the seed's shape, the content exactly as created.
      const live = await stack.core.create({ vendorId: vendor, type: "order:paid", channel: "IN_APP",
        priority: 3, content: toStruct({ orderId: 881, total: 12.5 }) });
      await until(socket, () => events(socket, "notification").length, "notification");
      const [n] = events(socket, "notification");
      assertNotification(n, { vendorId: vendor });
      assert.equal(n.id, live.id);
      assert.equal(n.type, "order:paid");
      assert.equal(n.channel, "IN_APP");
      assert.equal(n.priority, 3);
      assert.equal(n.status, "SENT");
      assert.deepEqual(n.content, { orderId: 881, total: 12.5 });
      await until(socket, () => events(socket, "unreadCount").some((u) => u.data.count === 2), "count 2");
    } finally {
      socket.close();
    }
  });
}

test("a customer's notification has customerId and a null vendorId", async () => {
  const socket = await connect(stack.bridge, { auth: { token: token({ customer: 12 }) } });
  try {
    await until(socket, () => events(socket, "unreadCount").length, "unreadCount");
    await stack.core.create({ customerId: 12 });
    await until(socket, () => events(socket, "notification").length, "notification");
    assertNotification(events(socket, "notification")[0], { customerId: 12 });
  } finally {
    socket.close();
  }
});

test("an Authorization: Bearer header authenticates too", async () => {
  const socket = await connect(stack.bridge, {
    transports: ["polling"],
    extraHeaders: { Authorization: `Bearer ${token({ vendor: 103 })}` },
  });
  try {
    await until(socket, () => events(socket, "offlineNotifications").length, "offlineNotifications");
  } finally {
    socket.close();
  }
});

/** The notification's status once it is DELIVERED, or its last status
 * after 5 s (receipts reach the core a little after the ack). */
async function statusWhenDelivered(id) {
  let status;
  for (let i = 0; i < 100 && status !== "DELIVERED"; i++) {
    status = (await stack.core.call("GetNotification", { id })).status;
    await sleep(50);
  }
  return status;
}

test("acknowledging a notification marks it DELIVERED; markAsRead marks READ", async () => {
  const vendor = 104;
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor }) } });
  try {
    socket.on("notification", (_n, ack) => ack?.({ received: true }));
    await until(socket, () => events(socket, "unreadCount").length, "unreadCount");
    const created = await stack.core.create({ vendorId: vendor });
    await until(socket, () => events(socket, "notification").length, "notification");
    assert.equal(await statusWhenDelivered(created.id), "DELIVERED");

    const ack = await request(socket, "markAsRead", { ids: [created.id] });
    assert.deepEqual(ack, { error: false, statusCode: 200, message: null, data: { updated: 1 } });
    assert.equal((await stack.core.call("GetNotification", { id: created.id })).status, "READ");
    await until(socket, () => events(socket, "unreadCount").some((u) => u.data.count === 0), "count 0");
    const again = await request(socket, "markAsRead", { ids: [created.id] });
    assert.equal(again.data.updated, 0);
  } finally {
    socket.close();
  }
});

test("an ack with no arguments is a delivery receipt too", async () => {
  const vendor = 106;
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor }) },
    listeners: { notification: (_n, ack) => ack() } });
  try {
    await until(socket, () => events(socket, "unreadCount").length, "unreadCount");
    const created = await stack.core.create({ vendorId: vendor });
    await until(socket, () => events(socket, "notification").length, "notification");
    assert.equal(await statusWhenDelivered(created.id), "DELIVERED");
  } finally {
    socket.close();
  }
});

test("acknowledging offlineNotifications marks that page DELIVERED", async () => {
  const vendor = 105;
  const first = await stack.core.create({ vendorId: vendor });
  const second = await stack.core.create({ vendorId: vendor });
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor }) } });
  socket.on("offlineNotifications", (_page, ack) => ack?.("ok"));
  try {
    // The listener above may attach after the first emit; ask for the page
    // again through the client event as a fallback.
    let statuses = [];
    for (let i = 0; i < 100; i++) {
      statuses = await Promise.all([first, second].map(async (n) =>
        (await stack.core.call("GetNotification", { id: n.id })).status));
      if (statuses.every((s) => s === "DELIVERED")) break;
      await sleep(50);
    }
    assert.deepEqual(statuses, ["DELIVERED", "DELIVERED"]);
    // DELIVERED is still unread: the inbox keeps them until READ.
    const page = await request(socket, "offlineNotifications", { page: 1, limit: 20 });
    assert.equal(page.data.pagination.totalRecords, 2);
    assert.ok(page.data.items.every((n) => n.status === "DELIVERED"));
  } finally {
    socket.close();
  }
});

test("vendor 12 and customer 12 are different users", async () => {
  const vendorNote = await stack.core.create({ vendorId: 12 });
  const customer = await connect(stack.bridge, { auth: { token: token({ customer: 12 }) } });
  try {
    await until(customer, () => events(customer, "offlineNotifications").length, "offline");
    const [offline] = events(customer, "offlineNotifications");
    assert.ok(offline.data.items.every((n) => n.customerId === 12 && n.vendorId === null));
    assert.ok(!offline.data.items.some((n) => n.id === vendorNote.id));
    const ack = await request(customer, "markAsRead", { ids: [vendorNote.id] });
    assert.equal(ack.data.updated, 0);
    assert.equal((await stack.core.call("GetNotification", { id: vendorNote.id })).status, "SENT");
    await stack.core.create({ vendorId: 12 });
    await sleep(500);
    assert.equal(events(customer, "notification").filter((n) => n.vendorId === 12).length, 0);
  } finally {
    customer.close();
  }
});

test("healthz and readyz answer while the core is up; metrics only on their own listener", async () => {
  assert.equal((await fetch(`${stack.bridge.url}/healthz`)).status, 200);
  let ready;
  for (let i = 0; i < 50 && ready !== 200; i++) {
    ready = (await fetch(`${stack.bridge.url}/readyz`)).status;
    await sleep(100);
  }
  assert.equal(ready, 200);
  const metrics = await stack.bridge.metrics();
  assert.match(metrics, /notify_bridge_emits_total/);
  assert.ok(!metrics.includes("test-secret"));
  // Metrics have a listener of their own: the public one does not serve
  // them (a page on a rebinding domain could read them otherwise).
  assert.equal((await fetch(`${stack.bridge.url}/metrics`)).status, 404);
});
