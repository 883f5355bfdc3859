// Topics beyond plain fan-out: scheduled messages (schedule / cancel at the topic) and
// dead-lettering on a subscription.

import assert from "node:assert/strict";
import { describe } from "node:test";

import { approxTime, assertEmpty, declareToml, ids, kbtest, receiveN, seq } from "../harness.mjs";

const T_SCHED = "js-topic-sched";
const T_DLQ = "js-topic-dlq";

declareToml(`
[[topics]]
name = "${T_SCHED}"
[[topics.subscriptions]]
name = "a"
[[topics.subscriptions]]
name = "b"

[[topics]]
name = "${T_DLQ}"
[[topics.subscriptions]]
name = "s"
[[topics.subscriptions]]
name = "other"
`);

describe("topics: scheduling and dead-lettering", () => {
  kbtest("scheduleMessages on a topic: every subscription gets it after the time; cancel removes it from all", { timeout: 30_000 }, async ({ client }) => {
    const sender = client.createSender(T_SCHED);
    const a = client.createReceiver(T_SCHED, "a");
    const b = client.createReceiver(T_SCHED, "b");
    const at = new Date(Date.now() + 3_000);
    const seqs = await sender.scheduleMessages(
      [
        { body: "kept", messageId: "tsch-1", applicationProperties: { n: 1 } },
        { body: "cancelled", messageId: "tsch-2" },
      ],
      at,
    );
    assert.equal(seqs.length, 2);
    const nums = seqs.map((s) => s.toNumber());
    assert.ok(nums[0] >= 1 && nums[1] > nums[0], `schedule sequence numbers ${nums}`);
    // a third one, scheduled in its own call; both cancelled in one call
    const [seq3] = await sender.scheduleMessages({ body: "cancelled too", messageId: "tsch-3" }, at);
    await sender.cancelScheduledMessages([seqs[1], seq3]);

    // not visible before the scheduled time, in either subscription
    await assertEmpty(a, assert, 700);
    await assertEmpty(b, assert, 700);
    assert.ok(Date.now() < at.getTime(), "test timing: the scheduled time passed before the early receives finished");

    const gotA = await receiveN(a, 1, { timeoutMs: 10_000 });
    const arrived = Date.now();
    const gotB = await receiveN(b, 1, { timeoutMs: 10_000 });
    assert.deepEqual(ids(gotA), ["tsch-1"]);
    assert.deepEqual(ids(gotB), ["tsch-1"]);
    assert.ok(arrived >= at.getTime() - 200, `delivered ${at.getTime() - arrived} ms before its scheduled time`);
    for (const m of [...gotA, ...gotB]) {
      assert.equal(m.body, "kept");
      assert.equal(m.applicationProperties?.n, 1);
      assert.equal(seq(m), nums[0], `sequence number of ${m.messageId} in a subscription`);
      approxTime(assert, m.scheduledEnqueueTimeUtc, at, 1_000, "scheduledEnqueueTimeUtc");
      approxTime(assert, m.enqueuedTimeUtc, at, 2_000, "enqueuedTimeUtc");
    }
    await a.completeMessage(gotA[0]);
    await b.completeMessage(gotB[0]);

    // the cancelled ones never show up
    await assertEmpty(a, assert, 1_000);
    await assertEmpty(b, assert, 1_000);
    assert.deepEqual(ids(await a.peekMessages(10)), []);
    assert.deepEqual(ids(await b.peekMessages(10)), []);
  });

  kbtest("deadLetterMessage on a subscription: the subscription's dead-letter queue has it with reason and description", async ({ client }) => {
    await client.createSender(T_DLQ).sendMessages([
      { body: "bad", messageId: "tdl-1", applicationProperties: { keep: 1 } },
      { body: "good", messageId: "tdl-2" },
    ]);
    const receiver = client.createReceiver(T_DLQ, "s");
    const got = await receiveN(receiver, 2);
    assert.deepEqual(ids(got), ["tdl-1", "tdl-2"]);
    await receiver.deadLetterMessage(got[0], {
      deadLetterReason: "BadPayload",
      deadLetterErrorDescription: "the payload was bad",
    });
    await receiver.completeMessage(got[1]);
    await assertEmpty(receiver, assert);

    const dlq = client.createReceiver(T_DLQ, "s", { subQueueType: "deadLetter" });
    assert.match(dlq.entityPath, /\/Subscriptions\/s\/\$DeadLetterQueue$/i);
    const peeked = await dlq.peekMessages(10);
    assert.deepEqual(ids(peeked), ["tdl-1"]);
    const dead = await receiveN(dlq, 1);
    assert.deepEqual(ids(dead), ["tdl-1"]);
    const [d] = dead;
    assert.equal(d.body, "bad");
    assert.equal(d.deadLetterReason, "BadPayload");
    assert.equal(d.deadLetterErrorDescription, "the payload was bad");
    assert.equal(d.applicationProperties?.keep, 1);
    assert.equal(seq(d), seq(got[0]), "sequence number changed on dead-lettering");
    await dlq.completeMessage(d);
    await assertEmpty(dlq, assert, 1_000);

    // the other subscription's copies and its dead-letter queue are unaffected
    const other = client.createReceiver(T_DLQ, "other");
    const otherGot = await receiveN(other, 2);
    assert.deepEqual(ids(otherGot), ["tdl-1", "tdl-2"]);
    for (const m of otherGot) await other.completeMessage(m);
    assert.deepEqual(ids(await client.createReceiver(T_DLQ, "other", { subQueueType: "deadLetter" }).peekMessages(10)), []);
  });
});
