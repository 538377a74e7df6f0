// A seeded, randomized fault test, in the spirit of Jepsen and of
// FoundationDB's simulation: two bridges, one core on SQLite (then two cores
// on one PostgreSQL database), users in shared rooms, and a random schedule
// of connects (WebSocket and polling), clean and abrupt disconnects (also
// mid-handshake), creates, marks, and per 20 s of schedule a bridge
// kill -9, a core restart and a core kill -9. Afterwards it checks, from the clients' own records:
//
// - every acknowledged notification reached each socket that was live (had
//   its first inbox page) when it was created and stayed open, live or in a
//   later page;
// - each user's seqs have no gap and hold every acknowledged notification;
// - at every socket, the userIsOnline / userIsOffline events about each
//   peer alternate, and end in the peer's true state;
// - the last unreadCount each socket saw is the store's count;
// - once everyone has left, the bridges' and the cores' metrics agree that
//   nobody is online.
//
// RANDOMIZED_SEED replays a seed (the schedule of operations; the processes'
// timing is real), RANDOMIZED_SECONDS sets each setup's schedule length
// (default 20 s per setup).
import { test } from "node:test";
import assert from "node:assert/strict";
import { Core, Bridge, postgresDatabase, token, connect, connectAndDrop, request, metric, sleep, toStruct } from "./harness.js";

const SEED = process.env.RANDOMIZED_SEED ? Number(process.env.RANDOMIZED_SEED) : Math.floor(Math.random() * 2 ** 31);
const SECONDS = Number(process.env.RANDOMIZED_SECONDS ?? 20);
const USERS = 16;
const ROOMS = 6;
const MAX_SOCKETS_PER_USER = 4;
const TTL = "3s";

/** mulberry32: a small, well-mixed 32-bit generator; one seed, one schedule. */
function generator(seed) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  return {
    next,
    int: (n) => Math.floor(next() * n),
    pick: (list) => list[Math.floor(next() * list.length)],
    chance: (p) => next() < p,
  };
}

/** Waits until `check()` is truthy (bounded), then returns it. */
async function eventually(check, what, timeout = 30_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await sleep(200);
  }
  throw new Error(`${what} (seed ${SEED}); last: ${JSON.stringify(last)?.slice(0, 500)}`);
}

const peerKey = (data) => `${data.vendorId ?? ""}/${data.customerId ?? ""}`;

/** Every notification of a vendor, from the core's stream replay. */
async function storedOf(core, vendorId) {
  const stream = core.client.StreamUserEvents({ vendorId, afterSeq: "0" });
  const all = [];
  const total = Number((await core.call("ListOffline", { vendorId, limit: 1 })).lastSeq ?? 0);
  let timer;
  await new Promise((resolve, reject) => {
    if (total === 0) return resolve();
    stream.on("data", (event) => {
      if (event.notification) all.push(event.notification);
      if (all.length >= total) resolve();
    });
    stream.on("error", (error) => (error.code === 1 ? resolve() : reject(error)));
    timer = setTimeout(() => reject(new Error(`replay of vendor ${vendorId} stopped at ${all.length} of ${total}`)), 20_000);
  }).finally(() => clearTimeout(timer));
  stream.cancel();
  return all;
}

async function run(setup) {
  const random = generator(SEED ^ (setup.name === "sqlite" ? 0 : 0x9e3779b9));
  const cores = setup.cores;
  const bridges = setup.bridges;
  const users = Array.from({ length: USERS }, (_, i) => setup.firstUser + i);
  const tokens = new Map(users.map((vendor) => [vendor, token({ vendor })]));
  // Each user in two rooms; peers share one.
  const roomsOf = new Map(users.map((vendor) => [vendor, new Set([random.int(ROOMS), random.int(ROOMS)])]));
  for (const [vendor, rooms] of roomsOf) {
    for (const room of rooms) await cores[0].call("JoinRoom", { room: `${setup.name}-room-${room}`, vendorId: vendor });
  }
  const peersOf = (vendor) => users.filter((other) => other !== vendor &&
    [...roomsOf.get(other)].some((room) => roomsOf.get(vendor).has(room)));

  const sockets = []; // every socket ever opened, with its record
  const acked = []; // { id, seq, vendor, startedAt }
  const down = new Set(); // processes down right now
  let counts = { connects: 0, refused: 0, drops: 0, closes: 0, aborts: 0, creates: 0, failed: 0, marks: 0 };

  const open = () => sockets.filter((s) => s.connected);
  const openOf = (vendor) => open().filter((s) => s.vendor === vendor);

  async function connectOne() {
    const vendor = random.pick(users);
    const bridgeIndex = random.int(bridges.length);
    const transports = random.chance(0.3) ? ["polling"] : ["websocket"];
    if (openOf(vendor).length >= MAX_SOCKETS_PER_USER || down.has(`bridge${bridgeIndex}`)) return;
    try {
      const socket = await connect(bridges[bridgeIndex], {
        auth: { token: tokens.get(vendor) },
        transports,
        listeners: { notification: (_n, ack) => ack?.(), offlineNotifications: (_p, ack) => ack?.() },
      });
      socket.vendor = vendor;
      socket.bridgeIndex = bridgeIndex;
      socket.openedAt = Date.now();
      socket.on("disconnect", () => { socket.closedAt ??= Date.now(); });
      sockets.push(socket);
      counts.connects++;
    } catch {
      counts.refused++; // a bridge going down, or the limit
    }
  }

  async function operate() {
    const roll = random.next();
    if (roll < 0.25) return connectOne();
    if (roll < 0.32) {
      const bridgeIndex = random.int(bridges.length);
      if (down.has(`bridge${bridgeIndex}`)) return;
      counts.drops++;
      return connectAndDrop(bridges[bridgeIndex], tokens.get(random.pick(users))).catch(() => {});
    }
    if (roll < 0.42) {
      const socket = random.pick(open());
      if (!socket) return;
      socket.closedAt = Date.now();
      if (socket.io.engine.transport.name === "websocket" && random.chance(0.5)) {
        // Abrupt: the TCP connection drops, no goodbye.
        counts.aborts++;
        socket.io.engine.transport.ws?._socket?.destroy();
      } else {
        counts.closes++;
        socket.close();
      }
      return;
    }
    if (roll < 0.85) {
      const vendor = random.pick(users);
      const core = random.pick(cores);
      const startedAt = Date.now();
      try {
        const n = await core.create({ vendorId: vendor, content: toStruct({ message: `n${counts.creates}` }) });
        acked.push({ id: n.id, seq: Number(n.seq), vendor, startedAt });
        counts.creates++;
      } catch {
        counts.failed++;
      }
      return;
    }
    const socket = random.pick(open().filter((s) => s.liveAt));
    if (!socket) return;
    const seen = [...seenBy(socket)];
    if (seen.length === 0) return;
    const ids = Array.from({ length: 1 + random.int(3) }, () => random.pick(seen));
    counts.marks++;
    await request(socket, "markAsRead", { ids }).catch(() => {});
  }

  // Faults at random moments: a round of the three per 20 s of schedule.
  const kinds = [
    { name: "bridge kill -9", run: async () => {
      const index = random.int(bridges.length);
      down.add(`bridge${index}`);
      await bridges[index].kill();
      await sleep(300 + random.int(1500));
      await bridges[index].restart();
      down.delete(`bridge${index}`);
    } },
    { name: "core restart", run: async () => {
      const core = random.pick(cores);
      await core.terminate();
      await sleep(200 + random.int(1000));
      await core.restart();
    } },
    { name: "core kill -9", run: async () => {
      const core = random.pick(cores);
      await core.kill();
      await sleep(200 + random.int(1000));
      await core.restart();
    } },
  ];
  const rounds = Math.max(1, Math.floor(SECONDS / 20));
  const faults = [];
  for (let round = 0; round < rounds; round++) {
    for (const kind of kinds) faults.push({ ...kind, at: (round + 0.2 + random.next() * 0.6) / rounds });
  }
  faults.sort((a, b) => a.at - b.at);

  // Marks a socket live once its first page arrived.
  const started = Date.now();
  const end = started + SECONDS * 1000;
  const watcher = setInterval(() => {
    for (const socket of sockets) {
      if (!socket.liveAt && socket.received.some((r) => r.event === "offlineNotifications")) {
        socket.liveAt = socket.received.find((r) => r.event === "offlineNotifications").at;
      }
    }
  }, 10);
  // Faults run one after another (two at once on one process would start
  // it twice), beside the operations.
  let faultChain = Promise.resolve();
  const happened = [];
  try {
    while (Date.now() < end) {
      const progress = (Date.now() - started) / (SECONDS * 1000);
      while (faults.length && faults[0].at <= progress) {
        const fault = faults.shift();
        faultChain = faultChain.then(fault.run).then(() => happened.push(fault.name));
      }
      await Promise.all(Array.from({ length: 3 }, () => operate()));
      await sleep(10);
    }
    for (const fault of faults) faultChain = faultChain.then(fault.run).then(() => happened.push(fault.name));
    await faultChain;
  } finally {
    clearInterval(watcher);
    // Whatever happened, nothing of this run may keep the process alive.
    await faultChain.catch(() => {});
    setup.cleanup = () => { for (const socket of sockets) socket.close(); };
  }
  for (const socket of sockets) {
    if (!socket.liveAt && socket.received.some((r) => r.event === "offlineNotifications")) {
      socket.liveAt = socket.received.find((r) => r.event === "offlineNotifications").at;
    }
  }
  const tally = kinds.map((kind) => `${happened.filter((name) => name === kind.name).length} × ${kind.name}`);
  console.log(`randomized ${setup.name}: seed ${SEED}, ${SECONDS} s, ${JSON.stringify(counts)}, faults in this order: ` +
    `${happened.join(", ").slice(0, 200)}${happened.length > 3 ? "…" : ""} (${tally.join(", ")})`);

  // 1. Every acknowledged notification reached each socket live at its creation.
  const survivors = open();
  for (const socket of survivors) {
    const due = acked.filter((n) => n.vendor === socket.vendor && socket.liveAt && socket.liveAt < n.startedAt);
    await eventually(async () => {
      const seen = seenBy(socket);
      const missing = due.filter((n) => !seen.has(n.id));
      if (missing.length === 0) return true;
      // Not live: perhaps in a page past the first.
      await pageThrough(socket);
      return due.every((n) => seenBy(socket).has(n.id));
    }, `socket ${socket.id} of vendor ${socket.vendor} got every notification created while it was live`);
  }

  // 2. Seqs have no gap and hold every acknowledged notification.
  const core = cores[0];
  for (const vendor of users) {
    const stored = await storedOf(core, vendor);
    const seqs = stored.map((n) => Number(n.seq));
    assert.deepEqual(seqs, seqs.map((_, i) => i + 1), `vendor ${vendor}: seqs 1..${seqs.length} (seed ${SEED})`);
    const ids = new Set(stored.map((n) => n.id));
    const lost = acked.filter((n) => n.vendor === vendor && !ids.has(n.id));
    assert.deepEqual(lost, [], `vendor ${vendor}: nothing acknowledged is lost (seed ${SEED})`);
  }

  // 3. Presence alternates at every socket and ends in the true state.
  const onlineNow = (vendor) => openOf(vendor).length > 0;
  for (const socket of sockets) {
    for (const [peer, heard] of presenceHeardBy(socket)) {
      for (let i = 1; i < heard.length; i++) {
        assert.notEqual(heard[i], heard[i - 1],
          `socket ${socket.id} of vendor ${socket.vendor} heard peer ${peer} ${heard.map((h) => (h ? "on" : "off"))} (seed ${SEED})`);
      }
    }
  }
  await eventually(() => survivors.every((socket) => {
    for (const [peer, heard] of presenceHeardBy(socket)) {
      const vendor = Number(peer.split("/")[0]);
      if (heard.at(-1) !== onlineNow(vendor)) return false;
    }
    return true;
  }), "every open socket's last word on each peer is the peer's true state");
  for (const socket of survivors) {
    for (const peer of presenceHeardBy(socket).keys()) {
      assert.ok(peersOf(socket.vendor).includes(Number(peer.split("/")[0])), `only room peers are announced (seed ${SEED})`);
    }
  }

  // 4. The last count each socket saw is the store's.
  const storeCount = new Map();
  for (const vendor of users) {
    storeCount.set(vendor, Number((await core.call("ListOffline", { vendorId: vendor, limit: 1 })).pagination?.totalRecords ?? 0));
  }
  await eventually(() => survivors.every((socket) => {
    const last = socket.received.filter((r) => r.event === "unreadCount").at(-1);
    return last?.data.data.count === storeCount.get(socket.vendor);
  }), "every open socket's last unreadCount is the store's count");

  // 5. Everyone leaves; nobody is left online anywhere.
  for (const socket of survivors) socket.close();
  for (const bridge of bridges) {
    await eventually(async () => {
      const text = await bridge.metrics();
      return metric(text, "notify_bridge_users") === 0 && metric(text, "notify_bridge_sockets") === 0;
    }, `bridge ${bridge.url} holds no socket and no feed`);
  }
  await eventually(async () => {
    for (let room = 0; room < ROOMS; room++) {
      const members = (await core.call("ListRoomMembers", { room: `${setup.name}-room-${room}` })).members ?? [];
      if (members.some((m) => m.online)) return false;
    }
    return true;
  }, "nobody online at the core");
  for (const each of cores) {
    await eventually(async () => metric(await (await fetch(each.metricsUrl)).text(), "notify_online_users") === 0,
      `core ${each.addr} counts nobody online`);
  }
  return counts;
}

/** Ids a socket has seen: live, or in any page. */
function seenBy(socket) {
  const seen = new Set();
  for (const { event, data } of socket.received) {
    if (event === "notification") seen.add(data.id);
    if (event === "offlineNotifications") for (const n of data.data?.items ?? []) seen.add(n.id);
  }
  return seen;
}

/** Asks for every page of the socket's inbox (the answers are recorded too). */
async function pageThrough(socket) {
  for (let page = 1; page < 100; page++) {
    const answer = await request(socket, "offlineNotifications", { page, limit: 100 }).catch(() => null);
    if (!answer || answer.statusCode !== 200) return;
    socket.received.push(Object.defineProperty({ event: "offlineNotifications", data: answer }, "at", { value: Date.now() }));
    if (!answer.data.pagination.hasNext) return;
  }
}

/** Per peer, what the socket heard in order (true: online). */
function presenceHeardBy(socket) {
  const heard = new Map();
  for (const { event, data } of socket.received) {
    if (event !== "userIsOnline" && event !== "userIsOffline") continue;
    const key = peerKey(data.data);
    if (!heard.has(key)) heard.set(key, []);
    heard.get(key).push(event === "userIsOnline");
  }
  return heard;
}

/** Runs `body` on processes it starts, and stops them (and the run's sockets) however it ends. */
async function withProcesses(start, body) {
  const setup = { cores: [], bridges: [] };
  try {
    await start(setup);
    await body(setup);
  } finally {
    setup.cleanup?.();
    for (const bridge of setup.bridges) await bridge.stop();
    for (const core of setup.cores) await core.stop();
  }
}

test(`randomized faults, one core on SQLite (seed ${SEED})`, { timeout: (SECONDS + 240) * 1000 }, async () => {
  await withProcesses(async (setup) => {
    setup.cores.push(await Core.start(["--presence-ttl", TTL]));
    for (let i = 0; i < 2; i++) setup.bridges.push(await Bridge.start(setup.cores[0]));
  }, (setup) => run(Object.assign(setup, { name: "sqlite", firstUser: 100 })));
});

test(`randomized faults, two cores on PostgreSQL (seed ${SEED})`, { timeout: (SECONDS + 240) * 1000 }, async (t) => {
  const databaseUrl = postgresDatabase();
  if (!databaseUrl) return t.skip("no PostgreSQL");
  await withProcesses(async (setup) => {
    for (let i = 0; i < 2; i++) setup.cores.push(await Core.start(["--presence-ttl", TTL], { databaseUrl }));
    for (const core of setup.cores) setup.bridges.push(await Bridge.start(core));
  }, (setup) => run(Object.assign(setup, { name: "postgres", firstUser: 200 })));
});
