// Time to live: the queue's default_message_time_to_live, per-message timeToLive, and
// dead_lettering_on_message_expiration.

import assert from "node:assert/strict";
import { describe } from "node:test";

import { assertEmpty, declareQueue, ids, kbtest, receiveN, sleep } from "../harness.mjs";

const Q_TTL_DLQ = declareQueue("js-ttl-deadletter", {
  default_message_time_to_live: "2s",
  dead_lettering_on_message_expiration: true,
});
const Q_TTL_DROP = declareQueue("js-ttl-drop", { default_message_time_to_live: "1h" });

describe("expiry", () => {
  kbtest("queue default TTL caps the message TTL; expired messages are dead-lettered with TTLExpiredException", async ({ client }) => {
    const sender = client.createSender(Q_TTL_DLQ);
    const sentAt = Date.now();
    await sender.sendMessages([
      { body: "default ttl", messageId: "ttl-default" },
      { body: "long ttl", messageId: "ttl-long", timeToLive: 3_600_000 },
    ]);
    // visible right away; both expire after the queue's 2 s (the 1 h message TTL is capped).
    // (Not asserted: the header ttl / expiresAtUtc keybus reports for such messages; see the report.)
    const receiver = client.createReceiver(Q_TTL_DLQ);
    const peeked = await receiver.peekMessages(10);
    assert.deepEqual(ids(peeked), ["ttl-default", "ttl-long"]);
    await sleep(Math.max(0, sentAt + 3_000 - Date.now()));

    await assertEmpty(receiver, assert, 1_000);
    const dlq = client.createReceiver(Q_TTL_DLQ, { subQueueType: "deadLetter" });
    const dead = await receiveN(dlq, 2, { timeoutMs: 10_000 });
    assert.deepEqual(ids(dead), ["ttl-default", "ttl-long"]);
    for (const m of dead) {
      assert.equal(m.deadLetterReason, "TTLExpiredException", `deadLetterReason of ${m.messageId}`);
      await dlq.completeMessage(m);
    }
    await assertEmpty(dlq, assert);
  });

  kbtest("a per-message timeToLive shorter than the queue default expires the message (dropped, not dead-lettered)", async ({ client }) => {
    const sender = client.createSender(Q_TTL_DROP);
    await sender.sendMessages([
      { body: "short", messageId: "short-ttl", timeToLive: 1_500 },
      { body: "stays", messageId: "no-ttl" },
    ]);
    await sleep(2_500);
    const receiver = client.createReceiver(Q_TTL_DROP);
    const got = await receiveN(receiver, 1);
    assert.deepEqual(ids(got), ["no-ttl"]);
    await receiver.completeMessage(got[0]);
    await assertEmpty(receiver, assert);
    assert.deepEqual(ids(await client.createReceiver(Q_TTL_DROP, { subQueueType: "deadLetter" }).peekMessages(10)), []);
  });
});
