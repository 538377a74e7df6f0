// Limits a person can set: events per second per socket, sockets per user,
// incoming payload size, allowed origins; and a stalled socket's fate.
import { test } from "node:test";
import { readFileSync } from "node:fs";
import assert from "node:assert/strict";
import { useStack, rawWebSocket, wsFrame, token, connect, until, events, request, toStruct, sleep, metric } from "./harness.js";

const stack = useStack({ bridgeArgs: [
    "--events-per-second", "5", "--max-sockets-per-user", "2", "--max-payload", "20000",
    "--allowed-origins", "https://shop.example", "--write-stall-timeout", "3s",
  ] });

/** The kernel's state of the bridge's end of the connection from our local
 * port `clientPort` ("01" is ESTABLISHED), or null once it is gone. */
function serverSideState(bridge, clientPort) {
  const bridgePort = Number(new URL(bridge.url).port);
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text = "";
    try { text = readFileSync(file, "utf8"); } catch { continue; }
    for (const line of text.split("\n").slice(1)) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 4) continue;
      const port = (address) => parseInt(address.split(":").pop(), 16);
      if (port(fields[1]) === bridgePort && port(fields[2]) === clientPort) return fields[3];
    }
  }
  return null;
}

test("a flood of events gets 429, then the socket is disconnected", { timeout: 20_000 }, async () => {
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor: 71 }) } });
  const closed = new Promise((resolve) => socket.on("disconnect", resolve));
  await until(socket, () => events(socket, "unreadCount").length, "ready");
  for (let i = 0; i < 10_000 && socket.connected; i++) socket.emit("offlineNotifications", { page: 1 });
  assert.equal(await closed, "io server disconnect");
  const errors = events(socket, "appError");
  assert.ok(errors.length >= 1 && errors.every((e) => e.statusCode === 429), JSON.stringify(errors.slice(0, 3)));
  // Nothing else suffered: a new socket works.
  const fresh = await connect(stack.bridge, { auth: { token: token({ vendor: 71 }) } });
  const page = await request(fresh, "offlineNotifications", { page: 1 });
  assert.equal(page.statusCode, 200);
  fresh.close();
});

test("a steady client within the rate is never limited", async () => {
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor: 72 }) } });
  try {
    for (let i = 0; i < 12; i++) {
      assert.equal((await request(socket, "offlineNotifications", { page: 1 })).statusCode, 200);
      await sleep(220);
    }
    assert.equal(events(socket, "appError").length, 0);
  } finally {
    socket.close();
  }
});

test("an unknown event gets 400", async () => {
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor: 73 }) } });
  try {
    const answer = await request(socket, "deleteEverything", { all: true });
    assert.equal(answer.statusCode, 400);
    assert.match(answer.message, /unknown event/);
    assert.ok(socket.connected);
  } finally {
    socket.close();
  }
});

test("sockets per user are limited", async () => {
  const first = await connect(stack.bridge, { auth: { token: token({ customer: 74 }) } });
  const second = await connect(stack.bridge, { auth: { token: token({ customer: 74 }) } });
  try {
    const error = await connect(stack.bridge, { auth: { token: token({ customer: 74 }) } }).then(
      (s) => { s.close(); assert.fail("third socket accepted"); },
      (e) => e,
    );
    assert.equal(JSON.parse(error.message).statusCode, 429);
    // Another user is not affected.
    const other = await connect(stack.bridge, { auth: { token: token({ customer: 75 }) } });
    other.close();
  } finally {
    first.close();
    second.close();
  }
});

test("a payload over the limit closes only that socket", { timeout: 20_000 }, async () => {
  const socket = await connect(stack.bridge, { auth: { token: token({ vendor: 76 }) } });
  const closed = new Promise((resolve) => socket.on("disconnect", resolve));
  socket.emit("markAsRead", { ids: ["x".repeat(50_000)] });
  await closed;
  const fresh = await connect(stack.bridge, { auth: { token: token({ vendor: 76 }) } });
  assert.equal((await request(fresh, "offlineNotifications", {})).statusCode, 200);
  fresh.close();
});

test("browsers from other origins are refused unless allowed", async () => {
  const evil = await fetch(`${stack.bridge.url}/`, { headers: { Origin: "https://evil.example" } });
  assert.equal(evil.status, 403);
  assert.equal((await evil.json()).statusCode, 403);
  const handshake = `${stack.bridge.url}/socket.io/?EIO=4&transport=polling`;
  assert.equal((await fetch(handshake, { headers: { Origin: "https://evil.example" } })).status, 403);
  const shop = await fetch(handshake, { headers: { Origin: "https://shop.example" } });
  assert.equal(shop.status, 200);
  assert.equal(shop.headers.get("access-control-allow-origin"), "https://shop.example");
  const own = await fetch(`${stack.bridge.url}/`, { headers: { Origin: stack.bridge.url } });
  assert.equal(own.status, 200);
  assert.equal((await fetch(`${stack.bridge.url}/`)).status, 200, "no Origin: not a browser, allowed");
});

test("a socket that reads nothing stops getting events, others are not slowed, and it is closed", { timeout: 120_000 }, async () => {
  const stalledVendor = 77;
  const { raw } = await rawWebSocket(stack.bridge);
  raw.write(wsFrame(`40/notification,${JSON.stringify({ token: token({ vendor: stalledVendor }) })}`));
  await sleep(500);
  // Seen from the bridge's side, the connection is established.
  assert.equal(serverSideState(stack.bridge, raw.localPort), "01");
  raw.pause(); // from now on it reads nothing: its TCP buffers fill up

  const healthy = await connect(stack.bridge, { auth: { token: token({ vendor: 78 }) } });
  await until(healthy, () => events(healthy, "unreadCount").length, "healthy ready");
  const big = "x".repeat(60_000);
  for (let i = 0; i < 40; i++) {
    await stack.core.call("CreateNotifications", {
      recipients: Array.from({ length: 10 }, () => ({ vendorId: stalledVendor })).map((r, j) => (j === 0 ? r : { customerId: 10_000 + i * 10 + j })),
      type: "bulk", content: toStruct({ message: "big", blob: big }),
    });
  }
  // The stalled socket's backlog is ~2.4 MB per 40 sends; keep going until
  // the bridge gives up on it, while the healthy socket keeps receiving.
  // It gives up one of two ways, whichever comes first on this machine:
  // the socket's send buffer fills (it is marked stalled and gets nothing
  // more), or its writes wait out the write-stall timeout (its connection
  // is shut down and the socket leaves).
  const gaveUp = (metrics) => metric(metrics, "notify_bridge_stalled_disconnects_total") >= 1 ||
    (metric(metrics, "notify_bridge_write_stall_closes_total") >= 1 && metric(metrics, "notify_bridge_sockets") === 1);
  for (let round = 0; round < 60; round++) {
    const batch = [];
    for (let i = 0; i < 20; i++) batch.push(stack.core.create({ vendorId: stalledVendor, content: toStruct({ message: "more", blob: big }) }));
    await Promise.all(batch);
    const probe = await stack.core.create({ vendorId: 78, content: toStruct({ message: `probe ${round}` }) });
    await until(healthy, () => events(healthy, "notification").some((n) => n.id === probe.id), "healthy socket keeps up");
    if (gaveUp(await stack.bridge.metrics())) break;
  }
  // The write-stall close may have happened between two rounds: wait
  // (bounded) for its socket to leave.
  for (let i = 0; i < 100 && !gaveUp(await stack.bridge.metrics()); i++) await sleep(100);
  assert.ok(gaveUp(await stack.bridge.metrics()), "the bridge gave up on the stalled socket");
  // From then on the stalled socket is skipped: the healthy one still gets
  // every notification promptly (checked in the loop above), and new
  // notifications for the stalled user add nothing to the bridge's memory.
  const before = Number((await stack.bridge.metrics())
    .match(/^notify_bridge_emit_failures_total\{event="notification"\} (\S+)/m)?.[1] ?? 0);
  for (let i = 0; i < 20; i++) await stack.core.create({ vendorId: stalledVendor, content: toStruct({ message: "after" }) });
  await sleep(500);
  const after = Number((await stack.bridge.metrics())
    .match(/^notify_bridge_emit_failures_total\{event="notification"\} (\S+)/m)?.[1] ?? 0);
  assert.equal(after, before, "nothing more is queued for the stalled socket");
  assert.ok(healthy.connected);
  // The bridge closes its end once writes have made no progress for the
  // write-stall timeout (3 s here), even though the client never reads.
  const deadline = Date.now() + 30_000;
  while (serverSideState(stack.bridge, raw.localPort) === "01" && Date.now() < deadline) await sleep(200);
  assert.notEqual(serverSideState(stack.bridge, raw.localPort), "01", "the bridge closed the stalled connection");
  raw.destroy();
  healthy.close();
});
