// Role-based access with JWTs from an external OIDC issuer, seen through @azure/service-bus: the
// test is the issuer (an RSA key, a JWKS file named by the policy's `jwks_file`), signs tokens
// with node:crypto and hands them to the SDK through an ordinary TokenCredential. A second keybus
// process runs with `--dev-tls --policy`; the SDK reaches it over secure WebSockets with the
// development CA. Every decision must be in `<data-dir>/audit.jsonl`.

import assert from "node:assert/strict";
import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe } from "node:test";

import { isServiceBusError, ServiceBusClient } from "@azure/service-bus";
import WebSocket from "ws";

import { Broker, expectError, kbtest, receiveN, renderToml, sleep } from "../harness.mjs";

const ISSUER = "https://issuer.keybus-js.test";
const AUDIENCE = "https://servicebus.azure.net";
const Q_A = "js-rbac-a";
const Q_B = "js-rbac-b";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keybus-js-rbac-"));
const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const KID = "js-key-1";
const jwksPath = path.join(dir, "jwks.json");
fs.writeFileSync(jwksPath, JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid: KID, use: "sig", alg: "RS256" }] }));

const GRANTS = `
[[grants]]
principal = "sender"
role = "Sender"
scope = "queues/${Q_A}"

[[grants]]
principal = "receiver"
role = "Receiver"
scope = "queues/${Q_A}"

[[grants]]
principal = "owner"
role = "Owner"
scope = "namespace"
`;

function policyText(grants) {
  const principal = (id) => `[[principals]]\nid = "${id}"\nmatch = [{ issuer = "test", sub = "${id}" }]\n`;
  return `[[issuers]]\nid = "test"\nkind = "oidc"\nissuer = "${ISSUER}"\njwks_file = ${JSON.stringify(jwksPath)}\n\n` +
    ["sender", "receiver", "owner"].map(principal).join("\n") + grants;
}

const policyPath = path.join(dir, "policy.toml");
fs.writeFileSync(policyPath, policyText(GRANTS));

const b64 = (x) => Buffer.from(x).toString("base64url");

/** An RS256 token from the test issuer. */
function token(sub, { lifetimeS = 3600, ...claims } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = b64(JSON.stringify({ alg: "RS256", typ: "JWT", kid: KID }));
  const body = b64(JSON.stringify({ iss: ISSUER, aud: AUDIENCE, sub, iat: now, nbf: now, exp: now + lifetimeS, jti: randomUUID(), ...claims }));
  const sig = sign("sha256", Buffer.from(`${header}.${body}`), privateKey).toString("base64url");
  return `${header}.${body}.${sig}`;
}

/** A TokenCredential that always returns the same token. */
function staticCredential(tok) {
  return { getToken: async () => ({ token: tok, expiresOnTimestamp: Date.now() + 3_600_000 }) };
}

const rbac = new Broker({
  toml: renderToml(new Map([[Q_A, {}], [Q_B, {}]]), "keybus-js-rbac"),
  onDisk: true,
  extraArgs: ["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", policyPath],
});

const clients = [];
function clientFor(broker, tok) {
  const ca = fs.readFileSync(broker.caPath);
  const c = new ServiceBusClient(`localhost:${broker.amqpsPort}`, staticCredential(tok), {
    webSocketOptions: { webSocket: WebSocket, webSocketConstructorOptions: { ca } },
    retryOptions: { maxRetries: 0, retryDelayInMs: 100, maxRetryDelayInMs: 100, timeoutInMs: 5_000 },
  });
  clients.push(c);
  return c;
}

function audit(broker) {
  return fs
    .readFileSync(path.join(broker.dataDir, "audit.jsonl"), "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

const pid = (e) => e.principal?.id;

function assertUnauthorized(err, what) {
  assert.ok(isServiceBusError(err), `${what}: not a ServiceBusError: ${err?.name}: ${err?.message}`);
  assert.equal(err.code, "UnauthorizedAccess", `${what}: ${err.code}: ${err.message}`);
}

describe("rbac (JWT principals, policy grants, audit)", () => {
  after(async () => {
    await Promise.allSettled(clients.map((c) => c.close()));
    await rbac.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  kbtest("a Sender can send and cannot receive; a Receiver can receive and cannot send", { broker: rbac }, async ({ broker }) => {
    const asSender = clientFor(broker, token("sender"));
    await asSender.createSender(Q_A).sendMessages({ body: "from the sender", messageId: "rbac-1" });
    const err = await expectError(asSender.createReceiver(Q_A).receiveMessages(1, { maxWaitTimeInMs: 2_000 }), "sender receiving");
    assertUnauthorized(err, "sender receiving");

    const asReceiver = clientFor(broker, token("receiver"));
    const receiver = asReceiver.createReceiver(Q_A);
    const [m] = await receiveN(receiver, 1);
    assert.equal(m.body, "from the sender");
    await receiver.completeMessage(m);
    const err2 = await expectError(asReceiver.createSender(Q_A).sendMessages({ body: "nope" }), "receiver sending");
    assertUnauthorized(err2, "receiver sending");

    const events = audit(broker);
    assert.ok(events.some((e) => e.event === "authz" && e.decision === "deny" && pid(e) === "sender" && e.action === "receive"));
    assert.ok(events.some((e) => e.event === "authz" && e.decision === "deny" && pid(e) === "receiver" && e.action === "send"));
    assert.ok(events.some((e) => e.event === "authz" && e.decision === "allow" && pid(e) === "sender" && e.action === "send"));
    assert.ok(events.every((e) => !JSON.stringify(e).includes("eyJ")), "a token in the audit log");
  });

  kbtest("a queue-scoped grant does not reach another queue", { broker: rbac }, async ({ broker }) => {
    const err = await expectError(clientFor(broker, token("sender")).createSender(Q_B).sendMessages({ body: "x" }), "sender to B");
    assertUnauthorized(err, "sender to another queue");
    assert.ok(audit(broker).some((e) => e.event === "authz" && e.decision === "deny" && e.resource?.entity === Q_B));
  });

  kbtest("an expired token is refused", { broker: rbac }, async ({ broker }) => {
    const now = Math.floor(Date.now() / 1000);
    const old = token("owner", { iat: now - 7200, nbf: now - 7200, exp: now - 3600 });
    const err = await expectError(clientFor(broker, old).createSender(Q_A).sendMessages({ body: "late" }), "expired token");
    assertUnauthorized(err, "expired token");
    assert.ok(audit(broker).some((e) => e.event === "token.put" && e.decision === "deny" && e.reason === "ExpiredToken"));
  });

  kbtest("revoking a grant detaches a live receiver", { broker: rbac, timeout: 60_000 }, async ({ broker }) => {
    const client = clientFor(broker, token("receiver"));
    const receiver = client.createReceiver(Q_A);
    const errors = [];
    receiver.subscribe(
      { processMessage: async () => {}, processError: async ({ error }) => { errors.push(error); } },
      { autoCompleteMessages: false },
    );
    await sleep(1_500);
    assert.deepEqual(errors.map((e) => e.code), [], "no errors before the revocation");
    fs.writeFileSync(policyPath, policyText(GRANTS.replace('principal = "receiver"', 'principal = "owner"')));
    const deadline = Date.now() + 20_000;
    while (!errors.some((e) => e.code === "UnauthorizedAccess") && Date.now() < deadline) await sleep(200);
    await receiver.close();
    assert.ok(errors.some((e) => e.code === "UnauthorizedAccess"), `errors: ${errors.map((e) => `${e.code}: ${e.message}`).join(" | ")}`);
    const events = audit(broker);
    assert.ok(events.some((e) => e.event === "policy.reload" && e.decision === "allow"));
    assert.ok(events.some((e) => e.event === "link.detach" && e.reason === "access_revoked" && e.resource?.entity === Q_A));
    fs.writeFileSync(policyPath, policyText(GRANTS));
    await sleep(1_500);
  });
});
