// Peek-lock receiving and settlement: receiveMessages(n) with drain, complete, abandon, defer,
// dead-letter, lock renewal and lock expiry.

import assert from "node:assert/strict";
import { describe } from "node:test";

import {
  approxTime,
  assertEmpty,
  declareQueue,
  expectError,
  ids,
  kbtest,
  receiveN,
  seq,
  sleep,
} from "../harness.mjs";

const Q_DRAIN = declareQueue("js-drain");
const Q_DRAIN_LIMIT = declareQueue("js-drain-limit");
const Q_ABANDON = declareQueue("js-abandon", { max_delivery_count: 10 });
const Q_ABANDON_MAX = declareQueue("js-abandon-max", { max_delivery_count: 2 });
const Q_DEFER = declareQueue("js-defer");
const Q_DLQ = declareQueue("js-deadletter");
const Q_RENEW = declareQueue("js-renew", { lock_duration: "5s" });
const Q_EXPIRY = declareQueue("js-lock-expiry", { lock_duration: "5s", max_delivery_count: 10 });
const Q_DOUBLE = declareQueue("js-double-settle");

/** The rhea-promise link behind a ServiceBusReceiver's batching receiver (SDK internals, 7.9.5). */
function batchingLink(receiver) {
  return receiver._batchingReceiver?.link;
}

/** Count `receiver_drained` events (a flow with drain=true and link-credit=0 from the broker). */
function countDrains(link) {
  const counter = { n: 0 };
  link.on("receiver_drained", () => {
    counter.n += 1;
  });
  return counter;
}

describe("peek-lock settlement", () => {
  kbtest("receiveMessages(n) drains leftover credit; the broker answers drain and the link stays open", async ({ client }) => {
    const sender = client.createSender(Q_DRAIN);
    await sender.sendMessages([1, 2, 3].map((i) => ({ body: i, messageId: `d-${i}` })));
    const receiver = client.createReceiver(Q_DRAIN);

    // 3 available, ask for 5: after the first message the SDK waits <= 1 s, then drains the 2 left.
    let t0 = Date.now();
    const first = await receiver.receiveMessages(5, { maxWaitTimeInMs: 5_000 });
    const elapsedFirst = Date.now() - t0;
    const link = batchingLink(receiver);
    assert.ok(link, "no batching receiver link");
    assert.deepEqual(ids(first), ["d-1", "d-2", "d-3"]);
    // Unanswered drain => the SDK waits up to the remaining time and then *closes* the link.
    assert.equal(link.isOpen(), true, "receiver link was closed after receiveMessages (drain not answered?)");
    assert.equal(link.credit, 0, `link credit after drain: ${link.credit}`);
    assert.ok(elapsedFirst < 3_500, `receiveMessages(5) with 3 available took ${elapsedFirst} ms`);
    const drains = countDrains(link);

    // Empty queue: the wait timer fires, the SDK drains all 5 credits.
    t0 = Date.now();
    const none = await receiver.receiveMessages(5, { maxWaitTimeInMs: 1_000 });
    const elapsedEmpty = Date.now() - t0;
    assert.deepEqual(ids(none), []);
    assert.equal(drains.n, 1, "expected exactly one drain echo for the empty receive");
    assert.equal(batchingLink(receiver), link, "the SDK replaced the receiver link (drain timed out?)");
    assert.equal(link.isOpen(), true, "receiver link closed after an empty drained receive");
    assert.ok(elapsedEmpty < 1_900, `empty receiveMessages(5, 1000 ms) took ${elapsedEmpty} ms`);

    // After the drain the broker holds no credit: a message sent now waits for the next receive.
    await sender.sendMessages({ body: 4, messageId: "d-4" });
    await sleep(300);
    const later = await receiver.receiveMessages(5, { maxWaitTimeInMs: 3_000 });
    assert.deepEqual(ids(later), ["d-4"]);
    assert.equal(drains.n, 2, "expected a drain echo after the partial receive");
    assert.equal(link.isOpen(), true);

    for (const m of [...first, ...later]) {
      assert.equal(m.deliveryCount, 0);
      await receiver.completeMessage(m);
    }
    await assertEmpty(receiver, assert);
    assert.equal(batchingLink(receiver), link, "the SDK replaced the receiver link");
  });

  kbtest("receiveMessages(n) never returns more than n; the rest arrive on later calls, each once", async ({ client }) => {
    const sender = client.createSender(Q_DRAIN_LIMIT);
    await sender.sendMessages(Array.from({ length: 10 }, (_, i) => ({ body: i, messageId: `l-${i}` })));
    const receiver = client.createReceiver(Q_DRAIN_LIMIT);
    const seen = [];
    const sizes = [];
    for (let i = 0; i < 6 && seen.length < 10; i++) {
      const batch = await receiver.receiveMessages(4, { maxWaitTimeInMs: 2_000 });
      sizes.push(batch.length);
      assert.ok(batch.length <= 4, `receiveMessages(4) returned ${batch.length}`);
      for (const m of batch) await receiver.completeMessage(m);
      seen.push(...ids(batch));
    }
    assert.deepEqual(seen, Array.from({ length: 10 }, (_, i) => `l-${i}`), `batch sizes ${sizes}`);
    assert.equal(batchingLink(receiver).isOpen(), true);
    await assertEmpty(receiver, assert);
  });

  kbtest("complete twice: the second completion is refused, the message is gone", async ({ client }) => {
    await client.createSender(Q_DOUBLE).sendMessages({ body: "x", messageId: "twice" });
    const receiver = client.createReceiver(Q_DOUBLE);
    const [m] = await receiveN(receiver, 1);
    assert.ok(m);
    await receiver.completeMessage(m);
    // rhea marks the delivery remotely settled by the broker's echo; the SDK then refuses locally
    const err = await expectError(receiver.completeMessage(m), "second completeMessage");
    assert.match(err.message, /already settled/);
    await assertEmpty(receiver, assert);
    assert.deepEqual(ids(await receiver.peekMessages(10)), []);
  });

  kbtest("abandon: redelivered with deliveryCount+1 and propertiesToModify applied", async ({ client }) => {
    await client.createSender(Q_ABANDON).sendMessages({
      body: "abandon me",
      messageId: "ab-1",
      applicationProperties: { original: "kept", counter: 1 },
    });
    const receiver = client.createReceiver(Q_ABANDON);
    const [m0] = await receiveN(receiver, 1);
    assert.ok(m0);
    assert.equal(m0.deliveryCount, 0);
    await receiver.abandonMessage(m0, { counter: 2, abandonedBy: "js", flag: true });

    const [m1] = await receiveN(receiver, 1);
    assert.ok(m1, "abandoned message not redelivered");
    assert.equal(m1.messageId, "ab-1");
    assert.equal(seq(m1), seq(m0), "sequence number changed on abandon");
    assert.equal(m1.deliveryCount, 1);
    assert.notEqual(m1.lockToken, undefined);
    assert.deepEqual(m1.applicationProperties, { original: "kept", counter: 2, abandonedBy: "js", flag: true });

    await receiver.abandonMessage(m1);
    const [m2] = await receiveN(receiver, 1);
    assert.ok(m2);
    assert.equal(m2.deliveryCount, 2);
    assert.deepEqual(m2.applicationProperties, { original: "kept", counter: 2, abandonedBy: "js", flag: true });
    // peeked copy carries the current delivery count
    const [peeked] = await receiver.peekMessages(1, { fromSequenceNumber: m2.sequenceNumber });
    assert.equal(peeked?.messageId, "ab-1");
    assert.equal(peeked.deliveryCount, 2);
    await receiver.completeMessage(m2);
    await assertEmpty(receiver, assert);
  });

  kbtest("abandon beyond max_delivery_count dead-letters with MaxDeliveryCountExceeded", async ({ client }) => {
    await client.createSender(Q_ABANDON_MAX).sendMessages({ body: "poison", messageId: "poison-1" });
    const receiver = client.createReceiver(Q_ABANDON_MAX);
    for (let i = 0; i < 2; i++) {
      const [m] = await receiveN(receiver, 1);
      assert.ok(m, `delivery ${i} missing`);
      assert.equal(m.deliveryCount, i);
      await receiver.abandonMessage(m);
    }
    await assertEmpty(receiver, assert);
    const dlq = client.createReceiver(Q_ABANDON_MAX, { subQueueType: "deadLetter" });
    const [d] = await receiveN(dlq, 1);
    assert.ok(d, "message not in the dead-letter queue");
    assert.equal(d.messageId, "poison-1");
    assert.equal(d.deadLetterReason, "MaxDeliveryCountExceeded");
    assert.equal(typeof d.deadLetterErrorDescription, "string");
    await dlq.completeMessage(d);
    await assertEmpty(dlq, assert);
  });

  kbtest("defer, receiveDeferredMessages([seq]), then complete", async ({ client }) => {
    const sender = client.createSender(Q_DEFER);
    await sender.sendMessages([
      { body: "later", messageId: "df-1", applicationProperties: { p: "v" } },
      { body: "now", messageId: "df-2" },
    ]);
    const receiver = client.createReceiver(Q_DEFER);
    const got = await receiveN(receiver, 2);
    assert.deepEqual(ids(got), ["df-1", "df-2"]);
    const deferredSeq = got[0].sequenceNumber;
    await receiver.deferMessage(got[0], { deferredBy: "js" });
    await receiver.completeMessage(got[1]);

    // deferred messages are skipped by normal receives but stay peekable in state "deferred"
    await assertEmpty(receiver, assert);
    const peeked = await receiver.peekMessages(10, { fromSequenceNumber: deferredSeq });
    assert.deepEqual(ids(peeked), ["df-1"]);
    assert.equal(peeked[0].state, "deferred");

    const deferred = await receiver.receiveDeferredMessages([deferredSeq]);
    assert.equal(deferred.length, 1, "receiveDeferredMessages returned nothing");
    const d = deferred[0];
    assert.equal(d.messageId, "df-1");
    assert.equal(d.body, "later");
    assert.equal(seq(d), deferredSeq.toNumber());
    assert.equal(d.state, "deferred");
    assert.deepEqual(d.applicationProperties, { p: "v", deferredBy: "js" });
    assert.ok(d.lockToken, "deferred message has no lock token");
    approxTime(assert, d.lockedUntilUtc, Date.now() + 60_000, 5_000, "lockedUntilUtc of the deferred message");
    // settled through $management update-disposition (the message did not arrive on the link)
    await receiver.completeMessage(d);

    assert.deepEqual(ids(await receiver.peekMessages(10, { fromSequenceNumber: deferredSeq })), []);
    const err = await expectError(receiver.receiveDeferredMessages([deferredSeq]), "receiveDeferredMessages after complete");
    assert.equal(err.code, "MessageNotFound", `code=${err.code} message=${err.message}`);
  });

  kbtest("deadLetter with reason/description, then receive from the deadLetter sub-queue", async ({ client }) => {
    await client.createSender(Q_DLQ).sendMessages([
      { body: "dead", messageId: "dl-1", applicationProperties: { keep: 1 } },
      { body: "dead too", messageId: "dl-2" },
    ]);
    const receiver = client.createReceiver(Q_DLQ);
    const got = await receiveN(receiver, 2);
    assert.deepEqual(ids(got), ["dl-1", "dl-2"]);
    await receiver.deadLetterMessage(got[0], {
      deadLetterReason: "BadPayload",
      deadLetterErrorDescription: "the payload was bad",
      addedOnDeadLetter: "yes",
    });
    await receiver.deadLetterMessage(got[1]); // no reason, no description
    await assertEmpty(receiver, assert);

    const dlq = client.createReceiver(Q_DLQ, { subQueueType: "deadLetter" });
    assert.match(dlq.entityPath, /\$DeadLetterQueue$/i);
    const peeked = await dlq.peekMessages(10);
    assert.deepEqual(ids(peeked), ["dl-1", "dl-2"]);
    const dead = await receiveN(dlq, 2);
    assert.deepEqual(ids(dead), ["dl-1", "dl-2"]);
    const [d1, d2] = dead;
    assert.equal(d1.body, "dead");
    assert.equal(d1.deadLetterReason, "BadPayload");
    assert.equal(d1.deadLetterErrorDescription, "the payload was bad");
    assert.equal(d1.applicationProperties?.keep, 1);
    assert.equal(d1.applicationProperties?.addedOnDeadLetter, "yes");
    assert.equal(seq(d1), seq(got[0]), "sequence number changed on dead-lettering");
    assert.equal(d2.deadLetterReason, undefined);
    await dlq.completeMessage(d1);
    await dlq.completeMessage(d2);
    await assertEmpty(dlq, assert);
  });

  kbtest("renewMessageLock extends lockedUntilUtc; completion after the original lock time succeeds", { timeout: 60_000 }, async ({ client }) => {
    await client.createSender(Q_RENEW).sendMessages({ body: "renew", messageId: "rn-1" });
    // the SDK auto-renews locks of received messages by default (5 min); turn that off
    const receiver = client.createReceiver(Q_RENEW, { maxAutoLockRenewalDurationInMs: 0 });
    const [m] = await receiveN(receiver, 1);
    assert.ok(m);
    const original = m.lockedUntilUtc;
    approxTime(assert, original, Date.now() + 5_000, 2_000, "initial lockedUntilUtc");
    await sleep(3_000);
    const renewed = await receiver.renewMessageLock(m);
    assert.ok(renewed instanceof Date, `renewMessageLock returned ${renewed}`);
    approxTime(assert, renewed, Date.now() + 5_000, 2_000, "renewed lockedUntilUtc");
    assert.ok(renewed.getTime() >= original.getTime() + 2_000, `renewed ${renewed.toISOString()} vs original ${original.toISOString()}`);
    assert.equal(m.lockedUntilUtc.getTime(), renewed.getTime(), "message.lockedUntilUtc not updated");
    // wait past the original expiry (but inside the renewed lock): the message must still be ours
    await sleep(Math.max(0, original.getTime() - Date.now()) + 1_000);
    assert.ok(Date.now() < renewed.getTime() - 500, "test timing: renewed lock already (almost) expired");
    const other = client.createReceiver(Q_RENEW);
    await assertEmpty(other, assert, 500);
    await receiver.completeMessage(m);
    await assertEmpty(receiver, assert);
  });

  kbtest("lock expiry: redelivered with deliveryCount 1; completing the stale message fails with MessageLockLost", { timeout: 60_000 }, async ({ client }) => {
    await client.createSender(Q_EXPIRY).sendMessages({ body: "expire", messageId: "ex-1" });
    // the SDK auto-renews locks of received messages by default (5 min); turn that off
    const receiver = client.createReceiver(Q_EXPIRY, { maxAutoLockRenewalDurationInMs: 0 });
    const [stale] = await receiveN(receiver, 1);
    assert.ok(stale);
    assert.equal(stale.deliveryCount, 0);
    // nothing else is visible while the lock is held
    await assertEmpty(receiver, assert, 1_000);
    await sleep(Math.max(0, stale.lockedUntilUtc.getTime() - Date.now()) + 1_000);

    const [again] = await receiveN(receiver, 1, { timeoutMs: 10_000 });
    assert.ok(again, "message not redelivered after its lock expired");
    assert.equal(again.messageId, "ex-1");
    assert.equal(seq(again), seq(stale));
    assert.equal(again.deliveryCount, 1);
    assert.notEqual(again.lockToken, stale.lockToken, "redelivery reused the expired lock token");

    const err = await expectError(receiver.completeMessage(stale), "completeMessage with an expired lock");
    assert.equal(err.code, "MessageLockLost", `code=${err.code} message=${err.message}`);
    await receiver.completeMessage(again);
    await assertEmpty(receiver, assert);
  });
});
