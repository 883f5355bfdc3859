// Topics, subscriptions and the rule manager (add-rule / remove-rule / enumerate-rules).

import assert from "node:assert/strict";
import { describe } from "node:test";

import { assertEmpty, declareToml, ids, kbtest, receiveN, seq, sleep } from "../harness.mjs";

declareToml(`
[[topics]]
name = "js-topic"
[[topics.subscriptions]]
name = "a"
[[topics.subscriptions]]
name = "b"

[[topics]]
name = "js-rules"
[[topics.subscriptions]]
name = "managed"

[[topics]]
name = "js-topic-subscribe"
[[topics.subscriptions]]
name = "s"
`);

describe("topics", () => {
  kbtest("each subscription gets its own copy with the topic's sequence number", async ({ client }) => {
    await client.createSender("js-topic").sendMessages([1, 2, 3].map((i) => ({ body: i, messageId: `t-${i}` })));
    const a = client.createReceiver("js-topic", "a");
    const b = client.createReceiver("js-topic", "b");
    const gotA = await receiveN(a, 3);
    const gotB = await receiveN(b, 3);
    assert.deepEqual(ids(gotA), ["t-1", "t-2", "t-3"]);
    assert.deepEqual(ids(gotB), ["t-1", "t-2", "t-3"]);
    assert.deepEqual(gotA.map(seq), gotB.map(seq));
    for (const m of gotA) await a.completeMessage(m);
    await b.abandonMessage(gotB[0]);
    const again = await receiveN(b, 1);
    assert.equal(again[0].messageId, "t-1");
    assert.equal(again[0].deliveryCount, 1);
    await b.completeMessage(again[0]);
    for (const m of gotB.slice(1)) await b.completeMessage(m);
    await assertEmpty(a, assert);
    await assertEmpty(b, assert);
  });

  kbtest("the rule manager adds, lists and removes rules, and they decide what arrives", async ({ client }) => {
    const rules = client.createRuleManager("js-rules", "managed");
    const initial = await rules.getRules();
    assert.deepEqual(initial.map((r) => r.name), ["$Default"]);
    await rules.createRule("red", { sqlExpression: "color = 'red'" }, { sqlExpression: "SET routed = 'yes'" });
    await rules.createRule("vip", { correlationId: "vip", applicationProperties: { tier: "gold" } });
    await assert.rejects(rules.createRule("red", { sqlExpression: "1=1" }), (e) => e.code === "MessagingEntityAlreadyExists");
    await rules.deleteRule("$Default");
    const listed = await rules.getRules();
    assert.deepEqual(listed.map((r) => r.name).sort(), ["red", "vip"]);
    const red = listed.find((r) => r.name === "red");
    assert.equal(red.filter.sqlExpression, "color = 'red'");
    assert.equal(red.action.sqlExpression, "SET routed = 'yes'");
    const vip = listed.find((r) => r.name === "vip");
    assert.equal(vip.filter.correlationId, "vip");
    assert.equal(vip.filter.applicationProperties.tier, "gold");

    await client.createSender("js-rules").sendMessages([
      { body: "r", messageId: "red-1", applicationProperties: { color: "red" } },
      { body: "b", messageId: "blue-1", applicationProperties: { color: "blue" } },
      { body: "v", messageId: "vip-1", correlationId: "vip", applicationProperties: { tier: "gold" } },
      { body: "n", messageId: "vip-2", correlationId: "vip", applicationProperties: { tier: "silver" } },
    ]);
    const receiver = client.createReceiver("js-rules", "managed");
    const got = await receiveN(receiver, 2);
    assert.deepEqual(ids(got).sort(), ["red-1", "vip-1"]);
    const redMsg = got.find((m) => m.messageId === "red-1");
    assert.equal(redMsg.applicationProperties.routed, "yes");
    for (const m of got) await receiver.completeMessage(m);
    await assertEmpty(receiver, assert);
    await assert.rejects(rules.deleteRule("nope"), (e) => e.code === "MessagingEntityNotFound");
  });

  kbtest("subscribe() on a subscription", async ({ client }) => {
    await client.createSender("js-topic-subscribe").sendMessages([1, 2, 3, 4].map((i) => ({ body: i, messageId: `s-${i}` })));
    const receiver = client.createReceiver("js-topic-subscribe", "s");
    const seen = [];
    const sub = receiver.subscribe(
      {
        processMessage: async (m) => {
          seen.push(m.messageId);
        },
        processError: async () => {},
      },
      { maxConcurrentCalls: 2 },
    );
    for (let i = 0; i < 100 && seen.length < 4; i++) await sleep(100);
    await sub.close();
    assert.deepEqual([...seen].sort(), ["s-1", "s-2", "s-3", "s-4"]);
    await assertEmpty(receiver, assert);
  });
});
