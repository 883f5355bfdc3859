// Run by cases/identity.mjs in a child process, so that the environment an application would
// have (IDENTITY_ENDPOINT / IDENTITY_HEADER, or AZURE_AUTHORITY_HOST / AZURE_TENANT_ID /
// AZURE_CLIENT_ID / AZURE_FEDERATED_TOKEN_FILE, and NODE_EXTRA_CA_CERTS, which Node reads only
// at start) is set before anything loads. The unmodified @azure/identity and
// @azure/service-bus do the rest. Prints one JSON line: { ok, claims, body?, code?, message? }.
//
// argv: <credential: managed|default> <host:port> <queue> <send|receive> [body]

import { DefaultAzureCredential, ManagedIdentityCredential } from "@azure/identity";
import { ServiceBusClient } from "@azure/service-bus";

const [kind, host, queue, action, body] = process.argv.slice(2);
const credential = kind === "default" ? new DefaultAzureCredential() : new ManagedIdentityCredential();
const out = { ok: false };
let client;
try {
  const token = await credential.getToken("https://servicebus.azure.net//.default");
  out.claims = JSON.parse(Buffer.from(token.token.split(".")[1], "base64url").toString());
  out.expiresInS = Math.round((token.expiresOnTimestamp - Date.now()) / 1000);
  client = new ServiceBusClient(host, credential, {
    retryOptions: { maxRetries: 0, timeoutInMs: 10_000 },
  });
  if (action === "send") {
    await client.createSender(queue).sendMessages({ body });
  } else {
    const receiver = client.createReceiver(queue);
    const [m] = await receiver.receiveMessages(1, { maxWaitTimeInMs: 5_000 });
    if (m) await receiver.completeMessage(m);
    out.body = m?.body ?? null;
  }
  out.ok = true;
} catch (err) {
  out.code = err?.code;
  out.name = err?.name;
  out.message = String(err?.message ?? err).slice(0, 500);
} finally {
  await client?.close().catch(() => {});
}
process.stdout.write(JSON.stringify(out) + "\n");
process.exit(0);
