// 45 notifications: page 1 on connect, pages 2 and 3 through the ack.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, request } from "./harness.js";

const stack = useStack();

test("45 notifications page as 20, 20, 5, newest first", async () => {
  const ids = [];
  for (let i = 0; i < 45; i++) ids.push((await stack.core.create({ vendorId: 7 })).id);
  const newestFirst = [...ids].reverse();
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor: 7 }) } });
  try {
    await until(socket, () => events(socket, "offlineNotifications").length, "offlineNotifications");
    const [first] = events(socket, "offlineNotifications");
    assert.equal(first.data.items.length, 20);
    assert.deepEqual(first.data.items.map((n) => n.id), newestFirst.slice(0, 20));
    assert.deepEqual(first.data.pagination, {
      currentPage: 1, nextPage: 2, prevPage: null, hasNext: true, hasPrev: false,
      totalPages: 3, totalRecords: 45,
    });

    const second = await request(socket, "offlineNotifications", { page: 2, limit: 20 });
    assert.deepEqual(second.data.items.map((n) => n.id), newestFirst.slice(20, 40));
    assert.deepEqual(second.data.pagination, {
      currentPage: 2, nextPage: 3, prevPage: 1, hasNext: true, hasPrev: true,
      totalPages: 3, totalRecords: 45,
    });

    const third = await request(socket, "offlineNotifications", { page: 3, limit: 20 });
    assert.equal(third.statusCode, 200);
    assert.equal(third.error, false);
    assert.deepEqual(third.data.items.map((n) => n.id), newestFirst.slice(40));
    assert.deepEqual(third.data.pagination, {
      currentPage: 3, nextPage: null, prevPage: 2, hasNext: false, hasPrev: true,
      totalPages: 3, totalRecords: 45,
    });

    const beyond = await request(socket, "offlineNotifications", { page: 4 });
    assert.deepEqual(beyond.data.items, []);
    assert.equal(beyond.data.pagination.nextPage, null);

    const defaults = await request(socket, "offlineNotifications", {});
    assert.equal(defaults.data.items.length, 20);
    assert.equal(defaults.data.pagination.currentPage, 1);

    // unreadCount equals totalRecords.
    assert.equal(events(socket, "unreadCount")[0].data.count, 45);
  } finally {
    socket.close();
  }
});

test("paging on while notifications of an earlier page are read misses nothing (the next page starts after the last one shown)", async () => {
  const vendor = 8;
  const ids = [];
  for (let i = 0; i < 45; i++) ids.push((await stack.core.create({ vendorId: vendor })).id);
  const newestFirst = [...ids].reverse();
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor }) } });
  try {
    await until(socket, () => events(socket, "offlineNotifications").length, "offlineNotifications");
    const [first] = events(socket, "offlineNotifications");
    assert.deepEqual(first.data.items.map((n) => n.id), newestFirst.slice(0, 20));
    // Another tab reads the newest two, shown on page 1.
    const read = await stack.core.call("MarkNotifications", { vendorId: vendor, ids: newestFirst.slice(0, 2), status: "READ" });
    assert.equal(Number(read.updated), 2);
    // Counting 20 from the top now would start two later and skip two.
    const second = await request(socket, "offlineNotifications", { page: 2, limit: 20 });
    assert.deepEqual(second.data.items.map((n) => n.id), newestFirst.slice(20, 40));
    assert.equal(second.data.pagination.totalRecords, 43);
    const third = await request(socket, "offlineNotifications", { page: 3, limit: 20 });
    assert.deepEqual(third.data.items.map((n) => n.id), newestFirst.slice(40));
    // A page asked out of order is counted from the top.
    const again = await request(socket, "offlineNotifications", { page: 2, limit: 20 });
    assert.deepEqual(again.data.items.map((n) => n.id), newestFirst.slice(22, 42));
  } finally {
    socket.close();
  }
});

test("after a live notification the next page is counted from the top again (every page moved down by one)", async () => {
  const vendor = 9;
  const ids = [];
  for (let i = 0; i < 25; i++) ids.push((await stack.core.create({ vendorId: vendor })).id);
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor }) } });
  try {
    await until(socket, () => events(socket, "offlineNotifications").length, "offlineNotifications");
    const live = await stack.core.create({ vendorId: vendor });
    await until(socket, () => events(socket, "notification").some((n) => n.id === live.id), "the live one");
    ids.push(live.id);
    const newestFirst = [...ids].reverse();
    // A page showing the newest 20 now ends one earlier: page 2 is the 6 after it.
    const second = await request(socket, "offlineNotifications", { page: 2, limit: 20 });
    assert.deepEqual(second.data.items.map((n) => n.id), newestFirst.slice(20));
  } finally {
    socket.close();
  }
});
