// Tokens from the platform's identity provider: the bridge verifies RS256,
// ES256 and EdDSA tokens against a PEM public key (--jwt-public-key) or a
// JWKS file (--jwks-file, re-read when it changes, `kid` choosing the key),
// checks --jwt-issuer and --jwt-audience, and refuses wrong keys, unknown
// kids and algorithm confusion. The keys are made here, with node:crypto.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac, generateKeyPairSync, sign as cryptoSign } from "node:crypto";
import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Core, Bridge, connect, events, until, token as hsToken } from "./harness.js";

const dir = mkdtempSync(join(tmpdir(), "notify-identity-"));
let core;
const bridges = [];
before(async () => {
  core = await Core.start();
});
after(async () => {
  for (const bridge of bridges) await bridge.stop();
  await core?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function bridgeWith(extra, options) {
  const bridge = await Bridge.start(core, extra, options);
  bridges.push(bridge);
  return bridge;
}

const KINDS = {
  RS256: () => generateKeyPairSync("rsa", { modulusLength: 2048 }),
  ES256: () => generateKeyPairSync("ec", { namedCurve: "P-256" }),
  EdDSA: () => generateKeyPairSync("ed25519"),
};

const b64 = (value) => Buffer.from(typeof value === "string" ? value : JSON.stringify(value)).toString("base64url");
const now = () => Math.floor(Date.now() / 1000);

/** A JWT over `claims`, signed with `privateKey` for `alg`. */
function signed(alg, privateKey, claims, header = {}) {
  const body = `${b64({ alg, typ: "JWT", ...header })}.${b64(claims)}`;
  const digest = alg === "EdDSA" ? null : "sha256";
  const options = alg === "ES256" ? { key: privateKey, dsaEncoding: "ieee-p1363" } : privateKey;
  return `${body}.${cryptoSign(digest, Buffer.from(body), options).toString("base64url")}`;
}

const vendorClaims = (vendor, extra = {}) => ({ sub: String(vendor), role: "vendor", exp: now() + 3600, ...extra });

function pemFile(name, publicKey) {
  const path = join(dir, name);
  writeFileSync(path, publicKey.export({ type: "spki", format: "pem" }));
  return path;
}

/** Writes the JWKS as a key rotation does: a new file renamed over the old. */
function writeJwks(path, keys) {
  const document = {
    keys: keys.map(({ kid, alg, publicKey }) => ({ ...publicKey.export({ format: "jwk" }), kid, alg, use: "sig" })),
  };
  writeFileSync(`${path}.new`, JSON.stringify(document));
  renameSync(`${path}.new`, path);
}

/** Connects with `jwt` and resolves with the socket's first inbox page, or rejects with the refusal. */
async function inbox(bridge, jwt) {
  const socket = await connect(bridge, { auth: { token: jwt } });
  try {
    await until(socket, () => events(socket, "offlineNotifications").length, "offlineNotifications");
    return events(socket, "offlineNotifications")[0].data.items;
  } finally {
    socket.close();
  }
}

async function refusal(bridge, jwt) {
  const error = await connect(bridge, { auth: { token: jwt } }).then(
    (socket) => {
      socket.close();
      assert.fail("connection should be refused");
    },
    (e) => e,
  );
  const envelope = JSON.parse(error.message);
  assert.equal(envelope.statusCode, 401);
  return envelope.message;
}

for (const [alg, generate] of Object.entries(KINDS)) {
  test(`a ${alg} token signed by the provider's key opens that user's inbox; another key's does not`, async () => {
    const vendor = { RS256: 7001, ES256: 7002, EdDSA: 7003 }[alg];
    const { publicKey, privateKey } = generate();
    const bridge = await bridgeWith(["--jwt-public-key", pemFile(`${alg}.pem`, publicKey)], { secret: false });
    const created = await core.create({ vendorId: vendor });
    const items = await inbox(bridge, signed(alg, privateKey, vendorClaims(vendor)));
    assert.deepEqual(items.map((n) => n.id), [created.id]);

    const stranger = generate().privateKey;
    assert.match(await refusal(bridge, signed(alg, stranger, vendorClaims(vendor))), /bad signature/);
    // No secret configured: the bridge's own kind of token is not accepted.
    assert.match(await refusal(bridge, hsToken({ vendor })), /HS256 tokens are not accepted/);
    assert.match(await refusal(bridge, signed(alg, privateKey, vendorClaims(vendor, { exp: now() - 10 }))), /expired/);
  });
}

test("alg confusion: the RSA public key used as an HS256 secret is refused, and so is a token naming another algorithm", async () => {
  const { publicKey } = KINDS.RS256();
  const path = pemFile("confusion.pem", publicKey);
  // With the bridge's own secret too, so HS256 tokens are checked at all.
  const bridge = await bridgeWith(["--jwt-public-key", path]);
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(vendorClaims(7010))}`;
  for (const secret of [publicKey.export({ type: "spki", format: "pem" }), publicKey.export({ type: "spki", format: "der" })]) {
    const forged = `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
    assert.match(await refusal(bridge, forged), /bad signature/);
  }
  // An EdDSA token where the provider's key is RSA.
  const ed = KINDS.EdDSA().privateKey;
  assert.match(await refusal(bridge, signed("EdDSA", ed, vendorClaims(7010))), /algorithm does not match the key/);
  // The secret's own tokens still work beside the provider's key.
  assert.ok(Array.isArray(await inbox(bridge, hsToken({ vendor: 7010 }))));
});

test("a JWKS file is re-read when the provider rotates its keys; kid chooses the key", async () => {
  const path = join(dir, "jwks.json");
  const first = { kid: "2026-11", alg: "RS256", ...KINDS.RS256() };
  const second = { kid: "2026-12", alg: "ES256", ...KINDS.ES256() };
  writeJwks(path, [first]);
  const bridge = await bridgeWith(["--jwks-file", path], { secret: false });
  const byFirst = signed("RS256", first.privateKey, vendorClaims(7020), { kid: first.kid });
  const bySecond = signed("ES256", second.privateKey, vendorClaims(7021), { kid: second.kid });
  assert.ok(Array.isArray(await inbox(bridge, byFirst)));
  assert.match(await refusal(bridge, bySecond), /unknown kid/);

  // Rotation, step one: the new key is published beside the old.
  writeJwks(path, [first, second]);
  assert.ok(Array.isArray(await inbox(bridge, bySecond)));
  assert.ok(Array.isArray(await inbox(bridge, byFirst)));
  // With two keys, a token must say which.
  const kidless = signed("RS256", first.privateKey, vendorClaims(7020));
  assert.match(await refusal(bridge, kidless), /no kid/);
  // A kid naming a key of another algorithm: the key decides.
  const lying = signed("RS256", first.privateKey, vendorClaims(7020), { kid: second.kid });
  assert.match(await refusal(bridge, lying), /algorithm does not match the key/);

  // Step two: the old key is withdrawn.
  writeJwks(path, [second]);
  assert.match(await refusal(bridge, byFirst), /unknown kid/);
  assert.ok(Array.isArray(await inbox(bridge, bySecond)));

  // A broken file (a bad deploy) keeps the keys read before.
  writeFileSync(`${path}.new`, "{ not json");
  renameSync(`${path}.new`, path);
  assert.ok(Array.isArray(await inbox(bridge, bySecond)));
});

test("--jwt-issuer and --jwt-audience are required of the provider's tokens", async () => {
  const { publicKey, privateKey } = KINDS.EdDSA();
  const bridge = await bridgeWith([
    "--jwt-public-key", pemFile("issuer.pem", publicKey),
    "--jwt-issuer", "https://id.shop.example",
    "--jwt-audience", "notify",
  ], { secret: false });
  const good = { iss: "https://id.shop.example", aud: "notify" };
  assert.ok(Array.isArray(await inbox(bridge, signed("EdDSA", privateKey, vendorClaims(7030, good)))));
  assert.ok(Array.isArray(await inbox(bridge, signed("EdDSA", privateKey, vendorClaims(7030, { ...good, aud: ["other", "notify"] })))));
  const cases = [
    [{ aud: "notify" }, /missing claim/],
    [{ ...good, iss: "https://evil.example" }, /wrong issuer/],
    [{ iss: good.iss }, /missing claim/],
    [{ ...good, aud: "billing" }, /wrong audience/],
  ];
  for (const [claims, says] of cases) {
    assert.match(await refusal(bridge, signed("EdDSA", privateKey, vendorClaims(7030, claims))), says, JSON.stringify(claims));
  }
});
