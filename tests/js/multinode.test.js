// Two cores and two bridges on one PostgreSQL database, on each bus (the
// default LISTEN/NOTIFY, and NATS): a notification created on core B
// reaches a socket on bridge 1 → core A; a user connected through both
// bridges goes offline once, when both sockets close.
import { describe, test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Core, Bridge, Nats, BUSES, token, connect, until, events, sleep, postgresDatabase } from "./harness.js";

for (const bus of BUSES) {
  describe(`on ${bus}`, () => {
    let databaseUrl;
    let nats;
    let coreA;
    let coreB;
    let bridge1;
    let bridge2;
    let skip = false;
    before(async () => {
      databaseUrl = postgresDatabase();
      if (bus === "nats") nats = await Nats.start();
      skip = !databaseUrl || (bus === "nats" && !nats);
      if (skip) return;
      const extra = bus === "nats" ? ["--bus", nats.url] : [];
      coreA = await Core.start(extra, { databaseUrl });
      coreB = await Core.start(extra, { databaseUrl });
      bridge1 = await Bridge.start(coreA);
      bridge2 = await Bridge.start(coreB);
    });
    after(async () => {
      for (const process of [bridge1, bridge2, coreA, coreB, nats]) await process?.stop();
    });

    test("created on core B, received through bridge 1 on core A", async (t) => {
      if (skip) return t.skip("no PostgreSQL or no nats-server");
      const socket = await connect(bridge1, { auth: { token: token({ vendor: 61 }) } });
      try {
        await until(socket, () => events(socket, "unreadCount").length, "ready");
        const created = await coreB.create({ vendorId: 61 });
        await until(socket, () => events(socket, "notification").some((n) => n.id === created.id), "cross-core notification");
        await until(socket, () => events(socket, "unreadCount").some((u) => u.data.count === 1), "unread 1");
      } finally {
        socket.close();
      }
    });

    test("a user on both bridges is offline once, after both sockets close", async (t) => {
      if (skip) return t.skip("no PostgreSQL or no nats-server");
      await coreA.call("JoinRoom", { room: "order:77", vendorId: 62 });
      await coreA.call("JoinRoom", { room: "order:77", customerId: 63 });
      const peerOn1 = await connect(bridge1, { auth: { token: token({ customer: 63 }) } });
      const peerOn2 = await connect(bridge2, { auth: { token: token({ customer: 63 }) } });
      // Through bridge 2 first: once the peers hear it online, core B's entry
      // is stored. Then bridge 1 too (core A's entry is written after its
      // connect, and before its disconnect, in A's order).
      const viaBridge2 = await connect(bridge2, { auth: { token: token({ vendor: 62 }) } });
      let viaBridge1;
      try {
        for (const peer of [peerOn1, peerOn2]) {
          await until(peer, () => events(peer, "userIsOnline").some((e) => e.data.vendorId === 62), "userIsOnline");
        }
        viaBridge1 = await connect(bridge1, { auth: { token: token({ vendor: 62 }) } });
        await until(viaBridge1, () => events(viaBridge1, "unreadCount").length, "connected through bridge 1");
        viaBridge1.close();
        await sleep(1500);
        for (const peer of [peerOn1, peerOn2]) {
          assert.equal(events(peer, "userIsOffline").length, 0, "still online through bridge 2");
        }
        viaBridge2.close();
        for (const peer of [peerOn1, peerOn2]) {
          await until(peer, () => events(peer, "userIsOffline").length, "userIsOffline");
        }
        await sleep(1000);
        for (const peer of [peerOn1, peerOn2]) {
          const offline = events(peer, "userIsOffline");
          assert.equal(offline.length, 1, "exactly once on every node");
          assert.equal(offline[0].data.vendorId, 62);
          assert.equal(offline[0].data.customerId, null);
        }
      } finally {
        for (const s of [peerOn1, peerOn2, viaBridge1, viaBridge2]) s?.close();
      }
    });
  });
}
