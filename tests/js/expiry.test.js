// Expiry, retention and erasure over real clients: an expiring notification
// leaves open inboxes within 2 s with its count; one expired before the
// socket connects is never in its first page; retention deletes old read
// ones and never unread ones; EraseUser deletes a user and seqs go on.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, request, toStruct, sleep } from "./harness.js";

// A retention of 2 s, so its sweep shows within the test.
const stack = useStack({ coreArgs: ["--retention", "2s"] });

const inSeconds = (s) => new Date(Date.now() + s * 1000).toISOString();

test("an expiring notification leaves every open inbox within 2 s, count and all", async () => {
  const customer = 461;
  const sale = await stack.core.create({
    customerId: customer, type: "sale:flash", content: toStruct({ message: "Flash sale: 2 hours left" }),
    expiresAt: inSeconds(1.5),
  });
  assert.match(sale.expiresAt, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
  await stack.core.create({ customerId: customer, type: "order:shipped", content: toStruct({ orderId: 5 }) });
  const auth = { token: token({ customer }) };
  const tabs = [
    await connect(stack.bridge, { auth, transports: ["websocket"] }),
    await connect(stack.bridge, { auth, transports: ["polling"] }),
  ];
  try {
    for (const tab of tabs) {
      await until(tab, () => events(tab, "unreadCount").at(-1)?.data.count === 2, "both counted first");
      const [inbox] = events(tab, "offlineNotifications");
      assert.equal(inbox.data.items.find((n) => n.id === sale.id)?.expiresAt, sale.expiresAt);
    }
    const expiresAt = new Date(sale.expiresAt).getTime();
    for (const tab of tabs) {
      const update = await until(tab, () => events(tab, "notificationUpdated")
        .find((u) => u.data.expired === true && u.data.ids.includes(sale.id)), "the expiry", 10_000);
      const at = tab.received.find((r) => r.data === update)?.at ?? Date.now();
      assert.ok(at - expiresAt < 2000, `told ${at - expiresAt} ms after expiresAt`);
      await until(tab, () => {
        const last = events(tab, "unreadCount").at(-1)?.data;
        return last?.count === 1 && JSON.stringify(last.byCategory) === JSON.stringify({ order: 1 });
      }, "the count without it");
    }
    const page = await request(tabs[0], "offlineNotifications", { view: "ALL" });
    assert.deepEqual(page.data.items.map((n) => n.type), ["order:shipped"], "listed nowhere");
  } finally {
    for (const tab of tabs) tab.close();
  }
});

test("one expired before the socket connects is never in its first page nor live", async () => {
  const customer = 462;
  const gone = await stack.core.create({
    customerId: customer, content: toStruct({ message: "soon gone" }), expiresAt: inSeconds(0.3),
  });
  await sleep(400);
  const socket = await connect(stack.bridge, { auth: { token: token({ customer }) } });
  try {
    await until(socket, () => events(socket, "unreadCount").length > 0, "the first count");
    const [inbox] = events(socket, "offlineNotifications");
    assert.ok(!inbox.data.items.some((n) => n.id === gone.id), "not in the first page");
    await until(socket, () => events(socket, "unreadCount").at(-1)?.data.count === 0, "counted nowhere");
    assert.ok(!events(socket, "notification").some((n) => n.id === gone.id), "never delivered");
  } finally {
    socket.close();
  }
});

test("an expiresAt that is not UTC, in the past or over a year ahead is INVALID_ARGUMENT naming it", async () => {
  for (const expiresAt of ["yesterday", "2020-01-01T00:00:00Z", inSeconds(400 * 24 * 3600),
    "2030-01-01T00:00:00+02:00"]) {
    await assert.rejects(stack.core.create({ vendorId: 463, expiresAt }), (error) => {
      assert.equal(error.code, 3, expiresAt);
      assert.match(error.details, /^expiresAt: /);
      return true;
    });
  }
});

test("retention deletes old read and archived ones, never unread ones", async () => {
  const vendor = 464;
  const made = [];
  for (let i = 0; i < 3; i++) made.push(await stack.core.create({ vendorId: vendor, content: toStruct({ i }) }));
  await stack.core.call("MarkNotifications", { vendorId: vendor, ids: [made[0].id], status: "READ" });
  await stack.core.call("ArchiveNotifications", { vendorId: vendor, ids: [made[1].id] });
  const exists = async (id) => stack.core.call("GetNotification", { id }).then(() => true, () => false);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline && ((await exists(made[0].id)) || (await exists(made[1].id)))) await sleep(200);
  assert.equal(await exists(made[0].id), false, "the read one is gone");
  assert.equal(await exists(made[1].id), false, "the archived one is gone");
  assert.equal(await exists(made[2].id), true, "the unread one stays");
  const all = await stack.core.call("ListNotifications", { vendorId: vendor, view: "ALL" });
  assert.equal(Number(all.pagination.totalRecords), 1);
});

test("EraseUser deletes every notification of the user; later ones continue the seq", async () => {
  const vendor = 465;
  for (let i = 0; i < 4; i++) await stack.core.create({ vendorId: vendor, content: toStruct({ i }) });
  await stack.core.call("JoinRoom", { room: "order:465", vendorId: vendor });
  const erased = await stack.core.call("EraseUser", { vendorId: vendor });
  assert.equal(Number(erased.deleted), 4);
  const inbox = await stack.core.call("ListOffline", { vendorId: vendor });
  assert.equal((inbox.items ?? []).length, 0);
  const members = await stack.core.call("ListRoomMembers", { room: "order:465" });
  assert.equal((members.members ?? []).length, 0);
  const next = await stack.core.create({ vendorId: vendor, content: toStruct({ after: true }) });
  assert.equal(next.seq, "5", "a seq is never reused");
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor }) } });
  try {
    await until(socket, () => events(socket, "unreadCount").at(-1)?.data.count === 1, "only the new one");
  } finally {
    socket.close();
  }
});
