// A connection storm: 5,000 sockets (500 users × 10), then sockets closing
// and opening at random for STORM_SECONDS (default 30). Afterwards presence
// is exact, and a room peer saw each user's online/offline changes strictly
// alternating: no offline announced twice, none missing at the end.
import { test } from "node:test";
import assert from "node:assert/strict";
import { useStack, token, connect, until, events, sleep } from "./harness.js";

const stack = useStack({ bridgeArgs: ["--max-sockets-per-user", "10"] });
const USERS = 500;
const PER_USER = 10;
const SECONDS = Number(process.env.STORM_SECONDS ?? 30);
const OBSERVER = 99_999;

async function onlineByCore() {
  const members = (await stack.core.call("ListRoomMembers", { room: "storm" })).members ?? [];
  return new Set(members.filter((m) => m.online && m.vendorId).map((m) => Number(m.vendorId)));
}

test("presence stays exact through a connection storm", { timeout: (SECONDS + 240) * 1000 }, async () => {
  // Tokens are signed by `notify token`; sign each user's once.
  const tokens = new Map();
  for (let vendor = 1; vendor <= USERS; vendor++) tokens.set(vendor, token({ vendor }));
  const open = async (vendor) => connect(stack.bridge, { auth: { token: tokens.get(vendor) } });
  for (let vendor = 1; vendor <= USERS; vendor++) {
    await stack.core.call("JoinRoom", { room: "storm", vendorId: vendor });
  }
  await stack.core.call("JoinRoom", { room: "storm", customerId: OBSERVER });
  const observer = await connect(stack.bridge, { auth: { token: token({ customer: OBSERVER }) } });

  const sockets = new Map(Array.from({ length: USERS }, (_, i) => [i + 1, []]));
  for (let round = 0; round < PER_USER; round++) {
    await Promise.all(Array.from({ length: USERS }, async (_, i) => {
      sockets.get(i + 1).push(await open(i + 1));
    }));
  }
  const total = () => [...sockets.values()].reduce((n, list) => n + list.length, 0);
  assert.equal(total(), USERS * PER_USER);

  // Churn: close a random socket, open one for a random user, many at once.
  let operations = 0;
  const until_ = Date.now() + SECONDS * 1000;
  while (Date.now() < until_) {
    const batch = [];
    for (let i = 0; i < 20; i++) {
      const closing = sockets.get(1 + Math.floor(Math.random() * USERS));
      if (closing.length > 0) closing.splice(Math.floor(Math.random() * closing.length), 1)[0].close();
      const vendor = 1 + Math.floor(Math.random() * USERS);
      if (sockets.get(vendor).length < PER_USER) {
        // A close the bridge has not seen yet still counts against the
        // user's 10: that refusal (429) is the limit working, not a fault.
        batch.push(open(vendor).then(
          (s) => sockets.get(vendor).push(s),
          (error) => assert.equal(JSON.parse(error.message).statusCode, 429),
        ));
      }
      operations += 2;
    }
    // Now and then a user loses every socket at once.
    const everything = sockets.get(1 + Math.floor(Math.random() * USERS));
    for (const s of everything.splice(0)) s.close();
    await Promise.all(batch);
    await sleep(50);
  }

  // Presence matches the sockets that are open.
  const expected = new Set([...sockets].filter(([, list]) => list.length > 0).map(([vendor]) => vendor));
  let online;
  for (let i = 0; i < 100; i++) {
    online = await onlineByCore();
    if (online.size === expected.size && [...expected].every((v) => online.has(v))) break;
    await sleep(100);
  }
  assert.deepEqual([...online].sort((a, b) => a - b), [...expected].sort((a, b) => a - b));

  // Everyone leaves; everyone ends offline.
  for (const list of sockets.values()) for (const s of list.splice(0)) s.close();
  for (let i = 0; i < 200 && (await onlineByCore()).size > 0; i++) await sleep(100);
  assert.equal((await onlineByCore()).size, 0);

  // What the peer heard alternates per user and ends offline. The store
  // says offline before the announcements reach the peer, so wait (up to
  // 15 s) for the peer to have heard every user's last one.
  const hearing = () => {
    const heard = new Map();
    for (const { event, data } of observer.received) {
      if (event !== "userIsOnline" && event !== "userIsOffline") continue;
      const list = heard.get(data.data.vendorId) ?? [];
      list.push(event === "userIsOnline");
      heard.set(data.data.vendorId, list);
    }
    return heard;
  };
  let heard = hearing();
  for (let i = 0; i < 150 && [...heard.values()].some((changes) => changes.at(-1)); i++) {
    await sleep(100);
    heard = hearing();
  }
  await sleep(500); // and nothing more arrives after the last offline
  heard = hearing();
  assert.equal(heard.size, USERS, "every user was announced");
  for (const [vendor, changes] of heard) {
    for (let i = 1; i < changes.length; i++) {
      assert.notEqual(changes[i], changes[i - 1], `vendor ${vendor}: ${changes.map((c) => (c ? "on" : "off")).join(",")}`);
    }
    assert.equal(changes.at(-1), false, `vendor ${vendor} ends offline`);
  }
  console.log(`storm: ${USERS * PER_USER} sockets, ${operations} opens and closes in ${SECONDS} s, ` +
    `${[...heard.values()].reduce((n, c) => n + c.length, 0)} presence events, all alternating`);
  observer.close();
});
