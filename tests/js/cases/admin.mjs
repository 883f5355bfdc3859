// The ATOM/XML management API with @azure/service-bus's ServiceBusAdministrationClient.
// The client always speaks https to the connection string's host and port, so these cases run
// against their own keybus started with `--dev-tls` (HTTPS port, development CA trusted through
// the client's `tlsOptions.ca`); AMQP traffic for runtime counts goes to the same broker.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { randomUUID } from "node:crypto";
import { after, describe } from "node:test";

import { ServiceBusAdministrationClient } from "@azure/service-bus";

import { Broker, kbtest, receiveN, renderToml, SAS_KEY, SAS_POLICY } from "../harness.mjs";

const adminBroker = new Broker({
  toml: renderToml(new Map(), "keybus-js-admin"),
  extraArgs: ["--dev-tls", "--amqps-port", "0", "--https-port", "0"],
});

function unique(prefix) {
  return `${prefix}-${randomUUID().slice(0, 8)}`;
}

/** No UseDevelopmentEmulator: the admin client ignores it and dials https://host:port. */
function adminClient(broker) {
  assert.ok(broker.httpsPort, `no https port in the broker's output: ${broker.stdoutLines.join(" | ")}`);
  const ca = readCa(broker);
  return new ServiceBusAdministrationClient(
    `Endpoint=sb://localhost:${broker.httpsPort};SharedAccessKeyName=${SAS_POLICY};SharedAccessKey=${SAS_KEY}`,
    { tlsOptions: { ca }, retryOptions: { maxRetries: 0 } },
  );
}

/** The development CA (printed relative to the broker's working directory when in memory). */
function readCa(broker) {
  assert.ok(broker.caPath, `no development CA line in the broker's output: ${broker.stdoutLines.join(" | ")}`);
  return fs.readFileSync(path.resolve(broker.workdir, broker.caPath));
}

async function rejectsWith(promise, code, statusCode) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.code, code, `${err.code}: ${err.message}`);
    if (statusCode) assert.equal(err.statusCode, statusCode);
    return true;
  });
}

async function collect(iter) {
  const out = [];
  for await (const x of iter) out.push(x);
  return out;
}

describe("management API (ServiceBusAdministrationClient over https, --dev-tls)", () => {
  after(() => adminBroker.stop());

  kbtest("queues: create, get, update, list, runtime properties, delete", { broker: adminBroker }, async ({ broker, newClient }) => {
    const admin = adminClient(broker);
    const name = unique("jsq");
    const created = await admin.createQueue(name, {
      lockDuration: "PT30S",
      maxDeliveryCount: 5,
      defaultMessageTimeToLive: "PT1H",
      deadLetteringOnMessageExpiration: true,
      requiresSession: false,
      maxSizeInMegabytes: 2048,
      autoDeleteOnIdle: "PT2H",
      userMetadata: "js meta",
      maxMessageSizeInKilobytes: 512,
      status: "Active",
    });
    assert.equal(created.name, name);
    assert.equal(created.lockDuration, "PT30S");
    const got = await admin.getQueue(name);
    assert.equal(got.name, name);
    assert.equal(got.maxDeliveryCount, 5);
    assert.equal(got.defaultMessageTimeToLive, "PT1H");
    assert.equal(got.deadLetteringOnMessageExpiration, true);
    assert.equal(got.maxSizeInMegabytes, 2048);
    assert.equal(got.autoDeleteOnIdle, "PT2H");
    assert.equal(got.userMetadata, "js meta");
    assert.equal(got.maxMessageSizeInKilobytes, 512);
    assert.equal(got.status, "Active");
    assert.equal(got.requiresSession, false);
    assert.equal(await admin.queueExists(name), true);

    got.maxDeliveryCount = 8;
    got.lockDuration = "PT45S";
    got.userMetadata = "changed";
    const updated = await admin.updateQueue(got);
    assert.equal(updated.maxDeliveryCount, 8);
    const again = await admin.getQueue(name);
    assert.equal(again.lockDuration, "PT45S");
    assert.equal(again.userMetadata, "changed");

    // Runtime properties from AMQP traffic: 3 sent, 1 dead-lettered, 1 scheduled.
    const client = newClient(broker.connStr());
    const sender = client.createSender(name);
    await sender.sendMessages([
      { body: "a", messageId: "a" },
      { body: "b", messageId: "b" },
      { body: "c", messageId: "c" },
    ]);
    await sender.scheduleMessages({ body: "later", messageId: "later" }, new Date(Date.now() + 3_600_000));
    const receiver = client.createReceiver(name);
    const [m] = await receiveN(receiver, 1);
    await receiver.deadLetterMessage(m, { deadLetterReason: "js-test" });
    const rt = await admin.getQueueRuntimeProperties(name);
    assert.equal(rt.name, name);
    assert.equal(rt.activeMessageCount, 2);
    assert.equal(rt.deadLetterMessageCount, 1);
    assert.equal(rt.scheduledMessageCount, 1);
    assert.equal(rt.transferMessageCount, 0);
    assert.equal(rt.totalMessageCount, 4);
    assert.ok(rt.sizeInBytes > 0);
    assert.ok(rt.createdAt instanceof Date && rt.accessedAt >= rt.createdAt);

    // Listing, in pages of 2 across more than one page.
    const more = [unique("jsq-page"), unique("jsq-page"), unique("jsq-page")];
    for (const n of more) await admin.createQueue(n);
    const pages = await collect(admin.listQueues().byPage({ maxPageSize: 2 }));
    assert.ok(pages.length >= 2, `${pages.length} pages`);
    const names = pages.flat().map((q) => q.name);
    for (const n of [name, ...more]) assert.ok(names.includes(n), `${n} not listed in ${names}`);
    assert.equal(new Set(names).size, names.length);
    const runtime = await collect(admin.listQueuesRuntimeProperties());
    assert.equal(runtime.find((q) => q.name === name)?.activeMessageCount, 2);

    await rejectsWith(admin.createQueue(name), "MessageEntityAlreadyExistsError", 409);
    await admin.deleteQueue(name);
    for (const n of more) await admin.deleteQueue(n);
    await rejectsWith(admin.getQueue(name), "MessageEntityNotFoundError", 404);
    await rejectsWith(admin.deleteQueue(name), "MessageEntityNotFoundError", 404);
    assert.equal(await admin.queueExists(name), false);
  });

  kbtest("forwardTo set with the JS client (supplementary authorization) forwards over AMQP", { broker: adminBroker }, async ({ broker, newClient }) => {
    const admin = adminClient(broker);
    const dest = unique("jsq-dest");
    const src = unique("jsq-src");
    await admin.createQueue(dest);
    const q = await admin.createQueue(src, { forwardTo: dest });
    assert.ok(q.forwardTo.endsWith(`/${dest}`), q.forwardTo);
    const client = newClient(broker.connStr());
    await client.createSender(src).sendMessages({ body: "fwd", messageId: "f1" });
    const [m] = await receiveN(client.createReceiver(dest), 1);
    assert.equal(m.messageId, "f1");
    await admin.deleteQueue(src);
    await admin.deleteQueue(dest);
  });

  kbtest("topics, subscriptions and rules: create, get, update, list, delete", { broker: adminBroker }, async ({ broker, newClient }) => {
    const admin = adminClient(broker);
    const topic = unique("jst");
    const t = await admin.createTopic(topic, { defaultMessageTimeToLive: "PT3H", maxSizeInMegabytes: 2048, supportOrdering: true });
    assert.equal(t.name, topic);
    const tg = await admin.getTopic(topic);
    assert.equal(tg.defaultMessageTimeToLive, "PT3H");
    tg.defaultMessageTimeToLive = "PT4H";
    await admin.updateTopic(tg);
    assert.equal((await admin.getTopic(topic)).defaultMessageTimeToLive, "PT4H");
    assert.ok((await collect(admin.listTopics())).some((x) => x.name === topic));

    // A subscription created with its first rule (DefaultRuleDescription).
    const s = await admin.createSubscription(topic, "eu", {
      lockDuration: "PT20S",
      maxDeliveryCount: 4,
      defaultRuleOptions: { name: "eu-only", filter: { sqlExpression: "region = 'EU'" }, action: { sqlExpression: "SET routed = 'eu'" } },
    });
    assert.equal(s.subscriptionName, "eu");
    assert.equal(s.topicName, topic);
    const sg = await admin.getSubscription(topic, "eu");
    assert.equal(sg.lockDuration, "PT20S");
    sg.maxDeliveryCount = 6;
    await admin.updateSubscription(sg);
    assert.equal((await admin.getSubscription(topic, "eu")).maxDeliveryCount, 6);
    await admin.createSubscription(topic, "all");
    assert.deepEqual((await collect(admin.listSubscriptions(topic))).map((x) => x.subscriptionName), ["all", "eu"]);

    const rules = await collect(admin.listRules(topic, "eu"));
    assert.deepEqual(rules.map((r) => r.name), ["eu-only"]);
    assert.equal(rules[0].filter.sqlExpression, "region = 'EU'");
    assert.equal(rules[0].action.sqlExpression, "SET routed = 'eu'");

    // Rules: SQL with an action, correlation; update; delete.
    const r1 = await admin.createRule(topic, "all", "big", { sqlExpression: "n > 10" }, { sqlExpression: "SET big = 1" });
    assert.equal(r1.name, "big");
    assert.equal(r1.filter.sqlExpression, "n > 10");
    const r2 = await admin.createRule(topic, "all", "typed", { contentType: "application/json", subject: "order", applicationProperties: { tenant: "t1" } });
    assert.equal(r2.filter.contentType, "application/json");
    assert.equal(r2.filter.subject, "order");
    assert.deepEqual(r2.filter.applicationProperties, { tenant: "t1" });
    const rg = await admin.getRule(topic, "all", "big");
    rg.filter = { sqlExpression: "n > 20" };
    await admin.updateRule(topic, "all", rg);
    assert.equal((await admin.getRule(topic, "all", "big")).filter.sqlExpression, "n > 20");
    assert.deepEqual((await collect(admin.listRules(topic, "all"))).map((r) => r.name), ["$Default", "big", "typed"]);
    await admin.deleteRule(topic, "all", "typed");
    await rejectsWith(admin.getRule(topic, "all", "typed"), "MessageEntityNotFoundError", 404);
    await rejectsWith(admin.createRule(topic, "all", "big", { sqlExpression: "1=1" }), "MessageEntityAlreadyExistsError", 409);

    // The rules route AMQP traffic at once.
    const client = newClient(broker.connStr());
    const sender = client.createSender(topic);
    await sender.sendMessages([
      { body: "eu", messageId: "1", applicationProperties: { region: "EU" } },
      { body: "us", messageId: "2", applicationProperties: { region: "US" } },
    ]);
    const [eu] = await receiveN(client.createReceiver(topic, "eu"), 1);
    assert.equal(eu.messageId, "1");
    assert.equal(eu.applicationProperties.routed, "eu");
    const srt = await admin.getSubscriptionRuntimeProperties(topic, "all");
    assert.equal(srt.activeMessageCount, 2);
    const trt = await admin.getTopicRuntimeProperties(topic);
    assert.equal(trt.subscriptionCount, 2);

    await admin.deleteSubscription(topic, "all");
    await rejectsWith(admin.getSubscription(topic, "all"), "MessageEntityNotFoundError", 404);
    await admin.deleteTopic(topic);
    await rejectsWith(admin.getTopic(topic), "MessageEntityNotFoundError", 404);
    assert.equal(await admin.topicExists(topic), false);
  });

  kbtest("namespace properties and a bad key", { broker: adminBroker }, async ({ broker }) => {
    const admin = adminClient(broker);
    const ns = await admin.getNamespaceProperties();
    assert.equal(ns.name, "keybus-js-admin");
    assert.equal(ns.messagingSku, "Standard");
    assert.ok(ns.createdAt instanceof Date);
    const ca = readCa(broker);
    const wrong = new ServiceBusAdministrationClient(
      `Endpoint=sb://localhost:${broker.httpsPort};SharedAccessKeyName=${SAS_POLICY};SharedAccessKey=d3JvbmcK`,
      { tlsOptions: { ca }, retryOptions: { maxRetries: 0 } },
    );
    await rejectsWith(wrong.getNamespaceProperties(), "UnauthorizedRequestError", 401);
    await rejectsWith(wrong.createQueue(unique("jsq-denied")), "UnauthorizedRequestError", 401);
  });
});
