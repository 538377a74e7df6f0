// `notify dev` runs core and bridge in one process and prints a token and
// a URL that work; `notify token` signs tokens the bridge accepts.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { BIN, Core, connect, until, events } from "./harness.js";

test("notify dev prints a working token and URL and stops cleanly on SIGTERM", async () => {
  const dir = mkdtempSync(join(tmpdir(), "notify-dev-"));
  const child = spawn(BIN, ["dev", "--listen", "127.0.0.1:0", "--core-listen", "127.0.0.1:0",
    "--metrics-listen", "127.0.0.1:0", "--database-url", `sqlite://${join(dir, "dev.db")}`, "--vendor", "8"],
  { stdio: ["ignore", "pipe", "ignore"] });
  try {
    const lines = createInterface({ input: child.stdout });
    const seen = {};
    await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("notify dev printed no URL")), 30_000);
      lines.on("line", (line) => {
        const core = line.match(/^notify core ready grpc=(\S+)/);
        if (core) seen.core = core[1];
        const open = line.match(/^open (http:\/\/\S+)\/#token=(\S+)$/);
        if (open) {
          [, seen.url, seen.token] = open;
          clearTimeout(timer);
          resolve();
        }
      });
    });
    const page = await fetch(`${seen.url}/healthz`);
    assert.equal(page.status, 200);
    const socket = await connect({ url: seen.url }, { auth: { token: seen.token } });
    await until(socket, () => events(socket, "unreadCount").length, "unreadCount");

    const core = Core.attach(seen.core);
    await core.create({ vendorId: 8, type: "dev:hello" });
    await core.stop();
    await until(socket, () => events(socket, "notification").length, "notification");
    assert.equal(events(socket, "notification")[0].type, "dev:hello");

    const exited = new Promise((resolve) => child.once("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    assert.equal(await exited, 0);
    socket.close();
  } finally {
    child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});
