// keybus's token service with the unmodified @azure/identity: ManagedIdentityCredential and
// DefaultAzureCredential through the App Service managed identity protocol (IDENTITY_ENDPOINT,
// IDENTITY_HEADER), and workload identity federation (AZURE_AUTHORITY_HOST, AZURE_TENANT_ID,
// AZURE_CLIENT_ID, AZURE_FEDERATED_TOKEN_FILE; @azure/identity's ManagedIdentityCredential
// exchanges the federated token at keybus's Entra-compatible endpoint). Each client runs in a
// child process (lib/identity-child.mjs) with exactly the environment an application would
// have, NODE_EXTRA_CA_CERTS included, and talks AMQPS to a `--dev-tls --policy` broker.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { after, describe } from "node:test";
import { fileURLToPath } from "node:url";

import { Broker, kbtest, renderToml } from "../harness.mjs";

const CHILD = path.join(path.dirname(fileURLToPath(import.meta.url)), "..", "lib", "identity-child.mjs");
const Q = "js-sts-q";
const TENANT = "keybus-js";
const MI_CLIENT = "11111111-1111-4111-8111-111111111111";
const MI_SECRET = "js-mi-secret-0123456789abcdef";
const WI_CLIENT = "22222222-2222-4222-8222-222222222222";
const WI_SUBJECT = "system:serviceaccount:default:js-worker";
const ISSUER = "https://k8s-issuer.keybus-js.test";
const EXCHANGE = "api://AzureADTokenExchange";

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keybus-js-sts-"));
const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwksPath = path.join(dir, "jwks.json");
fs.writeFileSync(jwksPath, JSON.stringify({ keys: [{ ...publicKey.export({ format: "jwk" }), kid: "k1", use: "sig", alg: "RS256" }] }));

const policyPath = path.join(dir, "policy.toml");
fs.writeFileSync(
  policyPath,
  `[[issuers]]
id = "k8s"
kind = "oidc"
issuer = "${ISSUER}"
jwks_file = ${JSON.stringify(jwksPath)}
audiences = ["${EXCHANGE}"]

[[principals]]
id = "mi-app"

[[principals]]
id = "wi-app"

[[grants]]
principal = "mi-app"
role = "Sender"
scope = "queues/${Q}"

[[grants]]
principal = "wi-app"
role = "Receiver"
scope = "queues/${Q}"

[sts]
tenant = "${TENANT}"

[[sts.managed_identities]]
principal = "mi-app"
client_id = "${MI_CLIENT}"
identity_header = "${MI_SECRET}"

[[sts.clients]]
client_id = "${WI_CLIENT}"
principal = "wi-app"
federated = [{ issuer = "${ISSUER}", subject = "${WI_SUBJECT}", audiences = ["${EXCHANGE}"] }]
`,
);

function federatedToken(sub = WI_SUBJECT) {
  const b64 = (x) => Buffer.from(JSON.stringify(x)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "RS256", typ: "JWT", kid: "k1" });
  const body = b64({ iss: ISSUER, aud: EXCHANGE, sub, iat: now, nbf: now, exp: now + 3600, jti: randomUUID() });
  return `${head}.${body}.${sign("sha256", Buffer.from(`${head}.${body}`), privateKey).toString("base64url")}`;
}

const sts = new Broker({
  toml: renderToml(new Map([[Q, {}]]), "keybus-js-sts"),
  onDisk: true,
  extraArgs: ["--dev-tls", "--amqps-port", "0", "--https-port", "0", "--policy", policyPath],
});

/** Run the child client with only the given identity variables (plus PATH and the CA). */
function runChild(broker, env, ...args) {
  const base = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !/^(AZURE_|IDENTITY_|MSI_|IMDS_|KEYBUS_|NODE_EXTRA_CA_CERTS)/.test(k)),
  );
  return new Promise((resolve, reject) => {
    execFile(
      process.execPath,
      [CHILD, ...args],
      { env: { ...base, NODE_EXTRA_CA_CERTS: broker.caPath, ...env }, timeout: 45_000 },
      (err, stdout, stderr) => {
        const line = stdout.trim().split("\n").pop();
        try {
          resolve(JSON.parse(line));
        } catch {
          reject(new Error(`child failed: ${err?.message}\nstdout: ${stdout}\nstderr: ${stderr.slice(-2000)}`));
        }
      },
    );
  });
}

const miEnv = (broker, secret = MI_SECRET) => ({
  IDENTITY_ENDPOINT: `http://127.0.0.1:${broker.httpPort}/msi/token`,
  IDENTITY_HEADER: secret,
});

function audit(broker) {
  return fs
    .readFileSync(path.join(broker.dataDir, "audit.jsonl"), "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

describe("identity (@azure/identity against keybus's token service)", () => {
  after(async () => {
    await sts.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  kbtest("ManagedIdentityCredential: a token for the registered identity, Sender rights only", { broker: sts }, async ({ broker }) => {
    const host = `localhost:${broker.amqpsPort}`;
    const sent = await runChild(broker, miEnv(broker), "managed", host, Q, "send", "from js managed identity");
    assert.ok(sent.ok, JSON.stringify(sent));
    assert.equal(sent.claims.appid, MI_CLIENT);
    assert.equal(sent.claims.aud, "https://servicebus.azure.net");
    assert.ok(sent.expiresInS > 3000, `expires in ${sent.expiresInS} s`);
    const recv = await runChild(broker, miEnv(broker), "managed", host, Q, "receive");
    assert.equal(recv.ok, false, JSON.stringify(recv));
    assert.equal(recv.code, "UnauthorizedAccess", JSON.stringify(recv));
    assert.ok(audit(broker).some((e) => e.event === "mi.issue" && e.decision === "allow" && e.principal?.id === "mi-app"));
  });

  kbtest("DefaultAzureCredential picks the managed identity endpoint", { broker: sts }, async ({ broker }) => {
    const r = await runChild(broker, { ...miEnv(broker), AZURE_TOKEN_CREDENTIALS: "ManagedIdentityCredential" }, "default", `localhost:${broker.amqpsPort}`, Q, "send", "from DefaultAzureCredential");
    assert.ok(r.ok, JSON.stringify(r));
  });

  kbtest("a wrong IDENTITY_HEADER gets no token", { broker: sts }, async ({ broker }) => {
    const r = await runChild(broker, miEnv(broker, "not-the-secret-0123456789"), "managed", `localhost:${broker.amqpsPort}`, Q, "send", "x");
    assert.equal(r.ok, false, JSON.stringify(r));
    assert.equal(r.claims, undefined);
    assert.ok(audit(broker).some((e) => e.event === "mi.issue" && e.decision === "deny" && e.reason === "bad_identity_header"));
  });

  kbtest("workload identity: the federated token is exchanged, the Receiver receives", { broker: sts }, async ({ broker }) => {
    const tokenFile = path.join(dir, "federated.jwt");
    fs.writeFileSync(tokenFile, federatedToken());
    const env = {
      AZURE_AUTHORITY_HOST: `https://localhost:${broker.httpsPort}`,
      AZURE_TENANT_ID: TENANT,
      AZURE_CLIENT_ID: WI_CLIENT,
      AZURE_FEDERATED_TOKEN_FILE: tokenFile,
    };
    const host = `localhost:${broker.amqpsPort}`;
    const r = await runChild(broker, env, "managed", host, Q, "receive");
    assert.ok(r.ok, JSON.stringify(r));
    assert.equal(r.claims.appid, WI_CLIENT);
    assert.ok(typeof r.body === "string" && r.body.startsWith("from "), JSON.stringify(r));
    const denied = await runChild(broker, env, "managed", host, Q, "send", "receiver may not send");
    assert.equal(denied.code, "UnauthorizedAccess", JSON.stringify(denied));
    fs.writeFileSync(tokenFile, federatedToken("system:serviceaccount:default:intruder"));
    const wrong = await runChild(broker, env, "managed", host, Q, "receive");
    assert.equal(wrong.ok, false, JSON.stringify(wrong));
    assert.ok(audit(broker).some((e) => e.event === "sts.issue" && e.decision === "allow" && e.principal?.id === "wi-app"));
    assert.ok(audit(broker).some((e) => e.event === "sts.issue" && e.decision === "deny"));
  });
});
