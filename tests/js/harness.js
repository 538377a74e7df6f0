// Starts real `notify core` and `notify bridge` processes on ephemeral
// loopback ports and gives the tests real clients: socket.io-client for the
// bridge, @grpc/grpc-js for the core. TEST_LOG=1 shows the processes' logs.
import { spawn, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import net from "node:net";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { io } from "socket.io-client";
import { before, after } from "node:test";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
export const BIN = process.env.NOTIFY_BIN ?? join(root, "target", "debug", "notify");
export const SECRET = "test-secret-of-at-least-16-bytes";
/** The Node.js peer bridge of the benchmarks (needs `cd crates/bench/peer && npm ci`). */
export const PEER = join(root, "crates", "bench", "peer", "server.js");

const definition = protoLoader.loadSync(join(root, "proto", "notify", "v1", "notify.proto"), {
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
});
const NotificationService = grpc.loadPackageDefinition(definition).notify.v1.NotificationService;

function startProcess(args, readyPrefix, command = BIN) {
  const child = spawn(command, args, {
    stdio: ["ignore", "pipe", process.env.TEST_LOG ? "inherit" : "ignore"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" },
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${args[0]} did not start`)), 30_000);
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      if (line.startsWith(readyPrefix)) {
        clearTimeout(timer);
        const fields = Object.fromEntries(
          line.slice(readyPrefix.length).trim().split(/\s+/).map((kv) => kv.split("=")),
        );
        resolve({ child, fields });
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${args[0]} exited with ${code}`));
    });
  });
}

function stopProcess(child, signal = "SIGKILL") {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    child.once("exit", () => resolve());
    child.kill(signal);
  });
}

/** A core process on its own SQLite file; restartable on the same file. */
export class Core {
  static async start(extra = [], { databaseUrl } = {}) {
    const core = new Core();
    core.dir = mkdtempSync(join(tmpdir(), "notify-js-"));
    core.extra = extra;
    core.databaseUrl = databaseUrl ?? `sqlite://${join(core.dir, "notify.db")}`;
    await core.spawn("127.0.0.1:0");
    return core;
  }

  /** A client for a core started elsewhere (no process of its own). */
  static attach(addr) {
    const core = new Core();
    core.addr = addr;
    core.client = new NotificationService(addr, grpc.credentials.createInsecure());
    return core;
  }

  async spawn(listen) {
    const { child, fields } = await startProcess(
      ["core", "--listen", listen, "--metrics-listen", "127.0.0.1:0",
        "--database-url", this.databaseUrl, ...this.extra],
      "notify core ready",
    );
    this.child = child;
    this.addr = fields.grpc;
    this.metricsUrl = `http://${fields.metrics}/metrics`;
    this.client?.close();
    this.client = new NotificationService(this.addr, grpc.credentials.createInsecure());
  }

  /** Calls a unary method, resolving with the response or rejecting with the status. */
  call(method, request) {
    return new Promise((resolve, reject) => {
      this.client[method](request, (error, response) => (error ? reject(error) : resolve(response)));
    });
  }

  create(request) {
    return this.call("CreateNotification", {
      type: "product:upload",
      channel: "PUSH",
      content: toStruct({ message: "hello" }),
      priority: 1,
      ...request,
    });
  }

  async kill() {
    await stopProcess(this.child);
  }

  /** SIGTERM, and resolves with the exit code once it has exited. */
  async terminate() {
    await stopProcess(this.child, "SIGTERM");
    return this.child.exitCode;
  }

  /** Starts again on the same database and the same port. */
  async restart() {
    await this.spawn(this.addr);
  }

  async stop() {
    this.client?.close();
    if (this.child) await stopProcess(this.child);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A bridge process in front of `core`; restartable on the same port. */
export class Bridge {
  /** `secret: false` starts it without the HS256 secret (identity provider keys in `extra`). */
  static async start(core, extra = [], { secret = true } = {}) {
    const bridge = new Bridge();
    // The secret from a file, as the README's production setup passes it
    // (the Python tests pass it inline).
    bridge.dir = mkdtempSync(join(tmpdir(), "notify-bridge-"));
    const secretFile = join(bridge.dir, "jwt-secret");
    writeFileSync(secretFile, `${SECRET}\n`, { mode: 0o600 });
    const secretArgs = secret ? ["--jwt-secret-file", secretFile] : [];
    bridge.args = ["--core-url", `http://${core.addr}`, ...secretArgs, ...extra];
    await bridge.spawn("127.0.0.1:0");
    return bridge;
  }

  async spawn(listen) {
    const { child, fields } = await startProcess(
      ["bridge", "--listen", listen, "--metrics-listen", "127.0.0.1:0", ...this.args], "notify bridge ready");
    this.child = child;
    this.addr = fields.http;
    this.url = `http://${fields.http}`;
    this.metricsUrl = `http://${fields.metrics}/metrics`;
  }

  /** SIGKILL: sockets see their connection drop. */
  async kill() {
    await stopProcess(this.child);
  }

  /** SIGTERM, and resolves with the exit code once it has exited. */
  async terminate() {
    await stopProcess(this.child, "SIGTERM");
    return this.child.exitCode;
  }

  /** The bridge's Prometheus text, from its own metrics listener. */
  async metrics() {
    return (await fetch(this.metricsUrl)).text();
  }

  /** Starts again on the same port. */
  async restart() {
    await this.spawn(this.addr);
  }

  async stop() {
    await stopProcess(this.child);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** The Node.js peer bridge (crates/bench/peer) in front of `core`, started like `Bridge`. */
export class Peer {
  static async start(core, extra = []) {
    if (!existsSync(join(dirname(PEER), "node_modules"))) {
      throw new Error("the peer bridge's packages are missing: run (cd crates/bench/peer && npm ci)");
    }
    const peer = new Peer();
    const args = [PEER, "--listen", "127.0.0.1:0", "--core-url", `http://${core.addr}`, "--jwt-secret", SECRET, ...extra];
    const { child, fields } = await startProcess(args, "peer bridge ready", process.execPath);
    peer.child = child;
    peer.addr = fields.http;
    peer.url = `http://${fields.http}`;
    return peer;
  }

  /** SIGTERM, and resolves with the exit code. */
  async stop() {
    await stopProcess(this.child, "SIGTERM");
    return this.child.exitCode;
  }
}

/** A token signed by `notify token`. */
export function token({ vendor, customer, ttl = "1h", secret = SECRET }) {
  const who = vendor !== undefined ? ["--vendor", String(vendor)] : ["--customer", String(customer)];
  return execFileSync(BIN, ["token", ...who, "--ttl", ttl, "--jwt-secret", secret]).toString().trim();
}

/**
 * A socket.io-client socket on /notification that records every event.
 * Resolves once connected (or rejects with the connect_error).
 */
export function connect(bridge, { auth, transports = ["websocket"], extraHeaders, reconnection = false, listeners = {} } = {}) {
  const socket = io(`${bridge.url}/notification`, {
    auth,
    transports,
    extraHeaders,
    reconnection,
    forceNew: true,
  });
  socket.received = [];
  // `at` (when it arrived) is not enumerable: records compare by content.
  socket.onAny((event, ...args) => socket.received.push(
    Object.defineProperty({ event, data: args[0] }, "at", { value: Date.now() })));
  // Listeners that must be there before the first event (e.g. to ack it).
  for (const [event, listener] of Object.entries(listeners)) socket.on(event, listener);
  return new Promise((resolve, reject) => {
    const refused = (error) => {
      socket.off("connect", connected);
      socket.close();
      reject(error);
    };
    const connected = () => {
      // Later connect errors belong to reconnection, not to this call.
      socket.off("connect_error", refused);
      resolve(socket);
    };
    socket.once("connect", connected);
    socket.once("connect_error", refused);
  });
}

/** The value of an unlabelled Prometheus metric in `text` (0 when absent). */
export function metric(text, name) {
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : 0;
}

/** Waits until `predicate(socket.received)` holds (10 s at most). */
export async function until(socket, predicate, what = "condition", timeout = 10_000) {
  const deadline = Date.now() + timeout;
  while (Date.now() < deadline) {
    const result = predicate(socket.received);
    if (result) return result;
    await sleep(20);
  }
  throw new Error(`timed out waiting for ${what}; received ${JSON.stringify(socket.received.map((r) => r.event))}`);
}

/** The received events named `event`. */
export function events(socket, event) {
  return socket.received.filter((r) => r.event === event).map((r) => r.data);
}

/** Emits a client event and resolves with the ack. */
export function request(socket, event, payload) {
  return socket.timeout(10_000).emitWithAck(event, payload);
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A JSON object as a google.protobuf.Struct for grpc-js. */
export function toStruct(object) {
  const value = (v) => {
    if (v === null) return { nullValue: "NULL_VALUE" };
    if (typeof v === "boolean") return { boolValue: v };
    if (typeof v === "number") return { numberValue: v };
    if (typeof v === "string") return { stringValue: v };
    if (Array.isArray(v)) return { listValue: { values: v.map(value) } };
    return { structValue: toStruct(v) };
  };
  return { fields: Object.fromEntries(Object.entries(object).map(([k, v]) => [k, value(v)])) };
}

/**
 * A PostgreSQL server of the test's own (for tests that stop it), through
 * scripts/postgres; `null` when PostgreSQL is not there and not required.
 */
export class OwnPostgres {
  static start() {
    if (!process.env.NOTIFY_TEST_POSTGRES_URL) {
      if (process.env.NOTIFY_REQUIRE_POSTGRES) throw new Error("NOTIFY_TEST_POSTGRES_URL is not set");
      return null;
    }
    const server = new OwnPostgres();
    server.dir = mkdtempSync(join(tmpdir(), "notify-js-pg-"));
    execFileSync("chmod", ["755", server.dir]);
    server.url = server.run("start");
    return server;
  }

  run(action) {
    return execFileSync(join(root, "scripts", "postgres"), [action, join(this.dir, "pg")]).toString().trim();
  }

  /** A fresh database on it. */
  database() {
    const name = `t_js_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;
    execFileSync("psql", [this.url, "-q", "-c", `CREATE DATABASE ${name}`]);
    return `${this.url.slice(0, this.url.lastIndexOf("/"))}/${name}`;
  }

  stop() { this.run("stop"); }
  resume() { this.run("resume"); }

  close() {
    this.run("stop");
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** A free loopback port (free when asked; the caller binds it next). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Resolves once something accepts connections on 127.0.0.1:`port`. */
async function listening(port, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const socket = net.connect(port, "127.0.0.1");
      socket.once("connect", () => { socket.destroy(); resolve(true); });
      socket.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on port ${port}`);
    await sleep(50);
  }
}

/**
 * A throwaway `nats-server` (Debian's package) on a free loopback port,
 * which a test may kill and start again on the same port; `null` when
 * there is none and none is required (NOTIFY_REQUIRE_NATS).
 */
export class Nats {
  static async start() {
    const bin = process.env.NATS_SERVER ?? "/usr/sbin/nats-server";
    if (!existsSync(bin)) {
      if (process.env.NOTIFY_REQUIRE_NATS) throw new Error(`no nats-server at ${bin}`);
      return null;
    }
    const nats = new Nats();
    nats.bin = bin;
    nats.port = await freePort();
    nats.url = `nats://127.0.0.1:${nats.port}`;
    await nats.resume();
    return nats;
  }

  /** Starts it (again) on its port. */
  async resume() {
    this.child = spawn(this.bin, ["-a", "127.0.0.1", "-p", String(this.port)], {
      stdio: ["ignore", "ignore", process.env.TEST_LOG ? "inherit" : "ignore"],
    });
    await listening(this.port);
  }

  /** Kills it at once (SIGKILL): connections drop without a goodbye. */
  async kill() {
    await stopProcess(this.child);
  }

  async stop() {
    if (this.child) await stopProcess(this.child);
  }
}

/**
 * The buses the multi-node tests run on: PostgreSQL's LISTEN/NOTIFY, and
 * NATS when a nats-server is there (each test starts its own).
 */
export const BUSES = ["listen", "nats"];

/**
 * A fresh database on the test PostgreSQL server (scripts/test starts one),
 * or null when there is none and none is required.
 */
export function postgresDatabase() {
  const admin = process.env.NOTIFY_TEST_POSTGRES_URL;
  if (!admin) {
    if (process.env.NOTIFY_REQUIRE_POSTGRES) throw new Error("NOTIFY_TEST_POSTGRES_URL is not set");
    return null;
  }
  const name = `t_js_${Date.now()}_${Math.floor(Math.random() * 1e6)}`;
  execFileSync("psql", [admin, "-q", "-c", `CREATE DATABASE ${name}`]);
  return `${admin.slice(0, admin.lastIndexOf("/"))}/${name}`;
}

/**
 * Defines a file's tests once per store: `define(store, stack)` for
 * "sqlite", then "postgres" when there is a server. `stack.core` and
 * `stack.bridge` (a core on that store and a bridge in front of it) are
 * set before the first test and stopped after the last.
 */
export function eachStore(define) {
  for (const [store, databaseUrl] of [["sqlite", undefined], ["postgres", postgresDatabase()]]) {
    if (databaseUrl === null) continue;
    const stack = {};
    before(async () => {
      stack.core = await Core.start([], { databaseUrl });
      stack.bridge = await Bridge.start(stack.core);
    });
    after(async () => {
      await stack.bridge?.stop();
      await stack.core?.stop();
    });
    define(store, stack);
  }
}

/**
 * A core and a bridge for the tests of one file: started before the first
 * test, stopped after the last. `stack.core` and `stack.bridge` are set
 * once started.
 */
export function useStack({ coreArgs = [], bridgeArgs = [] } = {}) {
  const stack = {};
  before(async () => {
    stack.core = await Core.start(coreArgs);
    stack.bridge = await Bridge.start(stack.core, bridgeArgs);
  });
  after(async () => {
    await stack.bridge?.stop();
    await stack.core?.stop();
  });
  return stack;
}

/** A masked client frame: text (opcode 1) or binary (opcode 2). */
export function wsFrame(data, opcode = 1) {
  const payload = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const mask = randomBytes(4);
  let header;
  if (payload.length < 126) header = Buffer.from([0x80 | opcode, 0x80 | payload.length]);
  else if (payload.length < 65536) header = Buffer.from([0x80 | opcode, 0x80 | 126, payload.length >> 8, payload.length & 255]);
  else {
    header = Buffer.alloc(10);
    header[0] = 0x80 | opcode;
    header[1] = 0x80 | 127;
    header.writeBigUInt64BE(BigInt(payload.length), 2);
  }
  return Buffer.concat([header, mask, Buffer.from(payload.map((b, i) => b ^ mask[i % 4]))]);
}

/**
 * A raw WebSocket to the bridge's Engine.IO endpoint, for tests that must
 * send what no real client would; `text()` is everything received so far.
 */
export async function rawWebSocket(bridge) {
  const url = new URL(bridge.url);
  const raw = net.connect(Number(url.port), url.hostname);
  await new Promise((resolve) => raw.once("connect", resolve));
  raw.write(`GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: ${url.host}\r\n` +
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
    `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n\r\n`);
  let received = Buffer.alloc(0);
  raw.on("data", (chunk) => { received = Buffer.concat([received, chunk]); });
  raw.on("error", () => {});
  await sleep(200);
  return { raw, text: () => received.toString("latin1") };
}


/**
 * A raw WebSocket client that opens the Engine.IO session, sends the
 * namespace CONNECT with `jwt` and drops the TCP connection at once, as a
 * client gone mid-handshake does.
 */
export async function connectAndDrop(bridge, jwt) {
  const url = new URL(bridge.url);
  const raw = net.connect(Number(url.port), url.hostname);
  raw.on("error", () => {});
  await new Promise((resolve, reject) => {
    raw.once("connect", resolve);
    raw.once("error", reject);
  });
  raw.write(`GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: ${url.host}\r\n` +
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
    `Sec-WebSocket-Key: ${randomBytes(16).toString("base64")}\r\n\r\n`);
  // The Engine.IO open packet ("0{…}") comes right after the upgrade.
  await new Promise((resolve) => {
    let seen = "";
    const timer = setTimeout(resolve, 5_000);
    raw.on("data", (chunk) => {
      seen += chunk.toString("latin1");
      if (seen.includes("0{")) {
        clearTimeout(timer);
        resolve();
      }
    });
    raw.once("close", () => {
      clearTimeout(timer);
      resolve();
    });
  });
  raw.write(wsFrame(`40/notification,${JSON.stringify({ token: jwt })}`));
  raw.destroy();
}
