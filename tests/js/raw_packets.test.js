// Malformed Engine.IO and Socket.IO packets over a raw WebSocket, the wrong
// namespace, binary attachments: each is refused or ignored, the bridge
// stays up and well-behaved clients are not disturbed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { useStack, rawWebSocket, wsFrame, token, connect, until, events, request, sleep } from "./harness.js";

const stack = useStack();

const MALFORMED = [
  "", "x", "9", "4", "4x", "42", "42/notification", "42/notification,", "42/notification,[",
  "42/notification,{\"not\":\"an array\"}", "42/notification,[]", "42/notification,[42]",
  "42/notification,[null,1]", "42/notification,99999999999999999999999[\"markAsRead\",{}]",
  "43/notification,1[]", "44/notification,{}", "45/notification,1-[\"x\"]", "46/notification,",
  "40/nope,{}", "40/notification,not json", "40/notification,{\"token\":123}",
  "41/notification,", "0", "1", "3", "5", "6", "\u0000\u0001\u0002", "4\uffff",
  "42/notification,[\"markAsRead\",{\"ids\":[\"" + "a".repeat(5000) + "\"]}]",
];

test("malformed packets from an unauthenticated raw socket break nothing", { timeout: 30_000 }, async () => {
  const healthy = await connect(stack.bridge, { auth: { token: token({ vendor: 91 }) } });
  await until(healthy, () => events(healthy, "unreadCount").length, "ready");
  for (const packet of MALFORMED) {
    const { raw } = await rawWebSocket(stack.bridge);
    raw.write(wsFrame(packet));
    await sleep(20);
    raw.destroy();
  }
  const binary = await rawWebSocket(stack.bridge);
  binary.raw.write(wsFrame(randomBytes(64), 2));
  binary.raw.write(wsFrame("451-/notification,[\"markAsRead\",{\"_placeholder\":true,\"num\":0}]"));
  binary.raw.write(wsFrame(randomBytes(32), 2));
  await sleep(100);
  binary.raw.destroy();
  // A handshake on the wrong namespace is refused.
  const wrong = await rawWebSocket(stack.bridge);
  wrong.raw.write(wsFrame(`40/admin,${JSON.stringify({ token: token({ vendor: 91 }) })}`));
  await sleep(300);
  assert.match(wrong.text(), /44\/admin/);
  wrong.raw.destroy();

  assert.equal((await fetch(`${stack.bridge.url}/healthz`)).status, 200);
  const page = await request(healthy, "offlineNotifications", { page: 1 });
  assert.equal(page.statusCode, 200);
  const created = await stack.core.create({ vendorId: 91 });
  await until(healthy, () => events(healthy, "notification").some((n) => n.id === created.id), "still live");
  healthy.close();
});

test("malformed packets after a valid handshake get 400 or are dropped; the socket stays usable", { timeout: 30_000 }, async () => {
  const { raw, text } = await rawWebSocket(stack.bridge);
  raw.write(wsFrame(`40/notification,${JSON.stringify({ token: token({ vendor: 92 }) })}`));
  for (let i = 0; i < 50 && !text().includes("unreadCount"); i++) await sleep(50);
  assert.match(text(), /offlineNotifications/);
  for (const packet of ["42/notification,[\"markAsRead\",\"ids\"]", "42/notification,5[\"markAsRead\",[1,2]]",
    "42/notification,6[\"offlineNotifications\",{\"page\":{\"$gt\":1}}]", "42/notification,7[\"nosuchevent\"]"]) {
    raw.write(wsFrame(packet));
  }
  await sleep(500);
  const replies = text();
  for (const id of [5, 6, 7]) {
    const reply = replies.match(new RegExp(`43/notification,${id}\\[(\\{.*?"statusCode":\\d+\\})\\]`));
    assert.ok(reply, `ack ${id}`);
    assert.equal(JSON.parse(reply[1]).statusCode, 400);
  }
  raw.write(wsFrame("42/notification,8[\"offlineNotifications\",{\"page\":1}]"));
  await sleep(300);
  assert.match(text(), /43\/notification,8\[\{"statusCode":200/);
  raw.destroy();
});
