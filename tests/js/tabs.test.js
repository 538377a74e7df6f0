// Two open tabs of one user agree without a reload: every change of the
// user's notifications reaches every socket of that user as
// `notificationUpdated`, whichever tab or backend made it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, request, toStruct } from "./harness.js";

const stack = useStack();

const updatesOf = (socket, status) =>
  events(socket, "notificationUpdated").filter((u) => u.data.status === status);
const has = (socket, status, id) => updatesOf(socket, status).some((u) => u.data.ids.includes(id));
const latestCount = (socket) => events(socket, "unreadCount").at(-1)?.data.count;

test("a read in one tab, by the backend, and a delivery receipt reach every tab", async () => {
  const vendor = 401;
  const created = [];
  for (let i = 0; i < 3; i++) {
    created.push(await stack.core.create({ vendorId: vendor, content: toStruct({ message: `order ${i}` }) }));
  }
  const auth = { token: token({ vendor }) };
  // One tab on each transport.
  const websocket = await connect(stack.bridge, { auth, transports: ["websocket"] });
  const polling = await connect(stack.bridge, { auth, transports: ["polling"] });
  const tabs = [websocket, polling];
  try {
    for (const tab of tabs) await until(tab, () => latestCount(tab) === 3, "the first count");

    // Read in one tab: both hear it, the envelope as the contract has it.
    const ack = await request(websocket, "markAsRead", { ids: [created[0].id] });
    assert.equal(ack.data.updated, 1);
    for (const tab of tabs) {
      await until(tab, () => has(tab, "READ", created[0].id), "the read, in every tab");
      await until(tab, () => latestCount(tab) === 2, "the count after the read");
    }
    const [update] = updatesOf(polling, "READ");
    assert.deepEqual(
      { statusCode: update.statusCode, error: update.error, message: update.message },
      { statusCode: 200, error: false, message: null },
    );
    assert.deepEqual(update.data.ids, [created[0].id]);
    assert.match(update.data.updatedAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);

    // Read by a backend over gRPC: both tabs hear it too.
    await stack.core.call("MarkNotifications", { vendorId: vendor, ids: [created[1].id], status: "READ" });
    for (const tab of tabs) {
      await until(tab, () => has(tab, "READ", created[1].id), "the backend's read, in every tab");
      await until(tab, () => latestCount(tab) === 1, "the count after the backend's read");
    }

    // A live notification acked in one tab is DELIVERED, in both.
    websocket.on("notification", (_n, ack) => ack?.());
    const live = await stack.core.create({ vendorId: vendor, content: toStruct({ message: "live" }) });
    for (const tab of tabs) {
      await until(tab, () => has(tab, "DELIVERED", live.id), "the delivery receipt, in every tab");
    }
  } finally {
    for (const tab of tabs) tab.close();
  }
});
