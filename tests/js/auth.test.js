// Refused connections: missing, malformed, expired, not-yet-valid, wrongly
// signed (another key, another algorithm, alg none) and role-less tokens.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { useStack, token, connect, SECRET, sleep } from "./harness.js";

const stack = useStack();

const b64 = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
function sign(header, claims, secret = SECRET, algorithm = "sha256") {
  const body = `${b64(header)}.${b64(claims)}`;
  return `${body}.${createHmac(algorithm, secret).update(body).digest("base64url")}`;
}
const now = () => Math.floor(Date.now() / 1000);

async function refused(auth, options = {}) {
  const error = await connect(stack.bridge, { auth, ...options }).then(
    (socket) => {
      socket.close();
      assert.fail("connection should be refused");
    },
    (e) => e,
  );
  const envelope = JSON.parse(error.message);
  assert.equal(envelope.error, true);
  assert.equal(envelope.statusCode, 401);
  assert.equal(typeof envelope.message, "string");
  return envelope.message;
}

test("no token", async () => {
  assert.match(await refused(undefined), /authentication required/);
  assert.match(await refused({}), /authentication required/);
  assert.match(await refused({ token: "" }), /authentication required/);
});

test("a malformed token", async () => {
  assert.match(await refused({ token: "not-a-jwt" }), /invalid token/);
  assert.match(await refused({ token: 42 }), /authentication required/);
});

test("an expired token", async () => {
  const expired = token({ vendor: 5, ttl: "1s" });
  await sleep(2100);
  assert.match(await refused({ token: expired }), /expired/);
  const old = sign({ alg: "HS256", typ: "JWT" }, { sub: "5", role: "vendor", exp: now() - 3600 });
  assert.match(await refused({ token: old }), /expired/);
});

test("a token not yet valid", async () => {
  const future = sign({ alg: "HS256", typ: "JWT" }, { sub: "5", role: "vendor", exp: now() + 7200, nbf: now() + 3600 });
  assert.match(await refused({ token: future }), /not yet valid/);
});

test("a token signed with another key or algorithm, or none", async () => {
  const claims = { sub: "5", role: "vendor", exp: now() + 3600 };
  assert.match(await refused({ token: sign({ alg: "HS256", typ: "JWT" }, claims, "another-secret-entirely") }), /invalid token/);
  assert.match(await refused({ token: sign({ alg: "HS512", typ: "JWT" }, claims, SECRET, "sha512") }), /invalid token/);
  assert.match(await refused({ token: `${b64({ alg: "none", typ: "JWT" })}.${b64(claims)}.` }), /invalid token/);
  assert.match(await refused({ token: token({ vendor: 5, secret: "another-secret-entirely" }) }), /invalid token/);
});

test("a token without a valid role or numeric sub", async () => {
  const exp = now() + 3600;
  assert.match(await refused({ token: sign({ alg: "HS256", typ: "JWT" }, { sub: "5", exp }) }), /invalid token/);
  assert.match(await refused({ token: sign({ alg: "HS256", typ: "JWT" }, { sub: "5", role: "admin", exp }) }), /role/);
  assert.match(await refused({ token: sign({ alg: "HS256", typ: "JWT" }, { sub: "five", role: "vendor", exp }) }), /sub/);
  assert.match(await refused({ token: sign({ alg: "HS256", typ: "JWT" }, { sub: "5", role: "vendor" }) }), /invalid token/);
});

test("a refused header token over polling", async () => {
  const message = await refused(undefined, {
    transports: ["polling"],
    extraHeaders: { Authorization: "Bearer nonsense" },
  });
  assert.match(message, /invalid token/);
});

test("a valid token made by hand is accepted", async () => {
  const socket = await connect(stack.bridge, {
    auth: { token: sign({ alg: "HS256", typ: "JWT" }, { sub: "5", role: "customer", exp: now() + 60 }) },
  });
  socket.close();
});
