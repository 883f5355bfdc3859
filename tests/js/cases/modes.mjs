// Receive modes and other ways to consume: receiveAndDelete, peekMessages, scheduled messages,
// subscribe() handlers, competing receivers.

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

const Q_RAD = declareQueue("js-receive-and-delete");
const Q_PEEK = declareQueue("js-peek");
const Q_SCHEDULE = declareQueue("js-schedule");
const Q_SUBSCRIBE = declareQueue("js-subscribe");
const Q_SUBSCRIBE_ERR = declareQueue("js-subscribe-error", { max_delivery_count: 5 });
const Q_SUBSCRIBE_MANUAL = declareQueue("js-subscribe-manual");
const Q_COMPETE = declareQueue("js-compete");

describe("receive modes", () => {
  kbtest("receiveAndDelete: messages arrive settled, without locks, and are gone", async ({ client }) => {
    await client.createSender(Q_RAD).sendMessages([1, 2, 3].map((i) => ({ body: i, messageId: `rad-${i}` })));
    const receiver = client.createReceiver(Q_RAD, { receiveMode: "receiveAndDelete" });
    const got = await receiveN(receiver, 3);
    assert.deepEqual(ids(got), ["rad-1", "rad-2", "rad-3"]);
    for (const m of got) {
      assert.equal(m.lockToken, undefined, `lockToken in receiveAndDelete: ${m.lockToken}`);
      assert.equal(m.lockedUntilUtc, undefined);
      assert.equal(m.deliveryCount, 0);
      assert.ok(m.sequenceNumber, "sequenceNumber missing");
    }
    const err = await expectError(receiver.completeMessage(got[0]), "completeMessage in receiveAndDelete mode");
    assert.match(err.message, /receiveAndDelete/);
    // nothing left for anybody, not even for a peek-lock receiver or a peek
    assert.deepEqual(ids(await receiver.peekMessages(10)), []);
    await assertEmpty(client.createReceiver(Q_RAD), assert);
    await receiver.close();
  });

  kbtest("peekMessages: in order, no locks, cursor continues, fromSequenceNumber, does not count deliveries", async ({ client, newClient }) => {
    await client.createSender(Q_PEEK).sendMessages(
      Array.from({ length: 5 }, (_, i) => ({ body: `p${i}`, messageId: `pk-${i}`, applicationProperties: { i } })),
    );
    const receiver = client.createReceiver(Q_PEEK);
    const all = await receiver.peekMessages(10);
    assert.deepEqual(ids(all), ["pk-0", "pk-1", "pk-2", "pk-3", "pk-4"]);
    const seqs = all.map(seq);
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `peeked sequence numbers ${seqs}`);
    for (const m of all) {
      assert.equal(m.state, "active");
      assert.equal(m.deliveryCount, 0);
      assert.equal(m.lockToken, undefined);
      assert.ok(m.enqueuedTimeUtc instanceof Date);
      assert.equal(m.body, `p${seq(m) - seqs[0]}`);
    }
    assert.deepEqual(all.map((m) => m.applicationProperties?.i), [0, 1, 2, 3, 4]);
    // the receiver remembers the last peeked sequence number
    assert.deepEqual(ids(await receiver.peekMessages(10)), []);
    // explicit start, bounded count
    const mid = await receiver.peekMessages(2, { fromSequenceNumber: all[2].sequenceNumber });
    assert.deepEqual(ids(mid), ["pk-2", "pk-3"]);
    const tail = await receiver.peekMessages(10, { fromSequenceNumber: all[3].sequenceNumber.add(1) });
    assert.deepEqual(ids(tail), ["pk-4"]);
    const beyond = await receiver.peekMessages(10, { fromSequenceNumber: all[4].sequenceNumber.add(100) });
    assert.deepEqual(ids(beyond), []);
    // (the peek cursor lives in the SDK's per-entity management client, i.e. per ServiceBusClient)
    const one = await newClient().createReceiver(Q_PEEK).peekMessages(1);
    assert.deepEqual(ids(one), ["pk-0"]);

    // locked messages stay peekable; peeking does not touch the delivery count
    const [locked] = await receiveN(receiver, 1);
    assert.equal(locked.messageId, "pk-0");
    assert.equal(locked.deliveryCount, 0);
    const again = await receiver.peekMessages(10, { fromSequenceNumber: all[0].sequenceNumber });
    assert.deepEqual(ids(again), ["pk-0", "pk-1", "pk-2", "pk-3", "pk-4"]);
    await receiver.completeMessage(locked);
    const after = await receiver.peekMessages(10, { fromSequenceNumber: all[0].sequenceNumber });
    assert.deepEqual(ids(after), ["pk-1", "pk-2", "pk-3", "pk-4"]);
    const rest = await receiveN(receiver, 4);
    assert.deepEqual(ids(rest), ["pk-1", "pk-2", "pk-3", "pk-4"]);
    for (const m of rest) await receiver.completeMessage(m);
  });

  kbtest("scheduleMessages, cancelScheduledMessages and scheduledEnqueueTimeUtc on send", { timeout: 60_000 }, async ({ client }) => {
    const sender = client.createSender(Q_SCHEDULE);
    const receiver = client.createReceiver(Q_SCHEDULE);
    const at = new Date(Date.now() + 4_000);
    const seqs = await sender.scheduleMessages(
      [
        { body: "scheduled", messageId: "sch-1" },
        { body: "cancelled", messageId: "sch-2" },
      ],
      at,
    );
    assert.equal(seqs.length, 2);
    const nums = seqs.map((s) => s.toNumber());
    assert.ok(nums[0] >= 1 && nums[1] > nums[0], `schedule sequence numbers ${nums}`);
    // a third one through the message property (x-opt-scheduled-enqueue-time annotation on send)
    await sender.sendMessages({ body: "via property", messageId: "sch-3", scheduledEnqueueTimeUtc: at });

    const peeked = await receiver.peekMessages(10, { fromSequenceNumber: seqs[0] });
    assert.deepEqual(ids(peeked), ["sch-1", "sch-2", "sch-3"]);
    for (const m of peeked) {
      assert.equal(m.state, "scheduled", `state of ${m.messageId}`);
      approxTime(assert, m.scheduledEnqueueTimeUtc, at, 1_000, `scheduledEnqueueTimeUtc of ${m.messageId}`);
    }
    assert.deepEqual(peeked.slice(0, 2).map(seq), nums);

    await sender.cancelScheduledMessages([seqs[1]]);
    assert.deepEqual(ids(await receiver.peekMessages(10, { fromSequenceNumber: seqs[0] })), ["sch-1", "sch-3"]);

    // not visible before the scheduled time
    await assertEmpty(receiver, assert, 1_000);
    assert.ok(Date.now() < at.getTime(), "test timing: the scheduled time passed before the early receive finished");

    const got = await receiveN(receiver, 2, { timeoutMs: 15_000 });
    const arrived = Date.now();
    assert.deepEqual(ids(got).sort(), ["sch-1", "sch-3"]);
    assert.ok(arrived >= at.getTime() - 500, `scheduled messages arrived ${at.getTime() - arrived} ms early`);
    for (const m of got) {
      approxTime(assert, m.scheduledEnqueueTimeUtc, at, 1_000, `scheduledEnqueueTimeUtc of received ${m.messageId}`);
      assert.equal(m.state, "active");
      await receiver.completeMessage(m);
    }
    await assertEmpty(receiver, assert);
    assert.deepEqual(ids(await receiver.peekMessages(10, { fromSequenceNumber: seqs[0] })), []);
  });

  kbtest("subscribe(): maxConcurrentCalls respected, autoCompleteMessages completes, each message once", async ({ client }) => {
    const N = 20;
    await client.createSender(Q_SUBSCRIBE).sendMessages(
      Array.from({ length: N }, (_, i) => ({ body: i, messageId: `sub-${i}` })),
    );
    const receiver = client.createReceiver(Q_SUBSCRIBE);
    const seen = [];
    const errors = [];
    let inflight = 0;
    let maxInflight = 0;
    let done;
    const allSeen = new Promise((resolve) => {
      done = resolve;
    });
    const subscription = receiver.subscribe(
      {
        async processMessage(m) {
          inflight += 1;
          maxInflight = Math.max(maxInflight, inflight);
          try {
            await sleep(100);
            seen.push(m.messageId);
            if (seen.length >= N) done();
          } finally {
            inflight -= 1;
          }
        },
        async processError(args) {
          errors.push(`${args.errorSource}: ${args.error?.code} ${args.error?.message}`);
        },
      },
      { maxConcurrentCalls: 4, autoCompleteMessages: true },
    );
    const timeout = sleep(20_000).then(() => "timeout");
    const outcome = await Promise.race([allSeen.then(() => "done"), timeout]);
    // let the last auto-completions go out before closing
    await sleep(500);
    await subscription.close();
    assert.equal(outcome, "done", `only ${seen.length}/${N} messages processed; errors: ${errors}`);
    assert.deepEqual(errors, []);
    assert.equal(new Set(seen).size, seen.length, `duplicates: ${seen}`);
    assert.deepEqual([...seen].sort(), Array.from({ length: N }, (_, i) => `sub-${i}`).sort());
    assert.ok(maxInflight <= 4, `maxConcurrentCalls=4 but ${maxInflight} handlers ran at once`);
    assert.ok(maxInflight >= 2, `handlers never ran concurrently (max ${maxInflight})`);
    // all auto-completed
    assert.deepEqual(ids(await receiver.peekMessages(50)), []);
    await assertEmpty(client.createReceiver(Q_SUBSCRIBE), assert);
  });

  kbtest("subscribe(): a throwing handler abandons (redelivery with deliveryCount 1) and reports to processError", async ({ client }) => {
    await client.createSender(Q_SUBSCRIBE_ERR).sendMessages([
      { body: "fail once", messageId: "se-1" },
      { body: "fine", messageId: "se-2" },
    ]);
    const receiver = client.createReceiver(Q_SUBSCRIBE_ERR);
    const deliveries = [];
    const errors = [];
    let done;
    const finished = new Promise((resolve) => {
      done = resolve;
    });
    const subscription = receiver.subscribe(
      {
        async processMessage(m) {
          deliveries.push([m.messageId, m.deliveryCount]);
          if (m.messageId === "se-1" && m.deliveryCount === 0) throw new Error("handler failure on purpose");
          if (deliveries.length >= 3) done();
        },
        async processError(args) {
          errors.push(args);
        },
      },
      { maxConcurrentCalls: 1, autoCompleteMessages: true },
    );
    const outcome = await Promise.race([finished.then(() => "done"), sleep(15_000).then(() => "timeout")]);
    await sleep(500);
    await subscription.close();
    assert.equal(outcome, "done", `deliveries ${JSON.stringify(deliveries)}`);
    assert.deepEqual(
      [...deliveries].sort(),
      [["se-1", 0], ["se-1", 1], ["se-2", 0]],
    );
    assert.equal(errors.length, 1, `processError calls: ${errors.map((e) => e.error?.message)}`);
    assert.equal(errors[0].errorSource, "processMessageCallback");
    assert.match(errors[0].error.message, /handler failure on purpose/);
    assert.deepEqual(ids(await receiver.peekMessages(10)), []);
  });

  kbtest("subscribe() with autoCompleteMessages false: explicit settlement from the handler", async ({ client }) => {
    const N = 6;
    await client.createSender(Q_SUBSCRIBE_MANUAL).sendMessages(
      Array.from({ length: N }, (_, i) => ({ body: i, messageId: `sm-${i}` })),
    );
    const receiver = client.createReceiver(Q_SUBSCRIBE_MANUAL);
    const completed = [];
    const deferred = [];
    const errors = [];
    let done;
    const finished = new Promise((resolve) => {
      done = resolve;
    });
    const subscription = receiver.subscribe(
      {
        async processMessage(m) {
          if (m.body % 2 === 0) {
            await receiver.completeMessage(m);
            completed.push(m.messageId);
          } else {
            await receiver.deferMessage(m);
            deferred.push(m.sequenceNumber);
          }
          if (completed.length + deferred.length >= N) done();
        },
        async processError(args) {
          errors.push(`${args.errorSource}: ${args.error?.code} ${args.error?.message}`);
        },
      },
      // maxConcurrentCalls 1: rhea 3.0.5's write_dispositions() merges two adjacent deliveries settled
      // in the same tick into one range with the *first* outcome even when the outcomes differ (its
      // outcome comparison is skipped while first === last), so a concurrent complete + defer goes
      // out as "accepted" for both. That is a client bug, not the broker's.
      { maxConcurrentCalls: 1, autoCompleteMessages: false },
    );
    const outcome = await Promise.race([finished.then(() => "done"), sleep(15_000).then(() => "timeout")]);
    await subscription.close();
    assert.equal(outcome, "done", `completed ${completed}, deferred ${deferred.length}; errors ${errors}`);
    assert.deepEqual(errors, []);
    assert.deepEqual([...completed].sort(), ["sm-0", "sm-2", "sm-4"]);
    const back = await receiver.receiveDeferredMessages(deferred);
    assert.deepEqual(ids(back).sort(), ["sm-1", "sm-3", "sm-5"]);
    for (const m of back) await receiver.completeMessage(m);
    assert.deepEqual(ids(await receiver.peekMessages(10)), []);
  });

  kbtest("competing receivers on separate connections: every message delivered exactly once", async ({ client, newClient }) => {
    const N = 30;
    await client.createSender(Q_COMPETE).sendMessages(
      Array.from({ length: N }, (_, i) => ({ body: i, messageId: `c-${i}` })),
    );
    const receivers = [client, newClient(), newClient()].map((c) => c.createReceiver(Q_COMPETE));
    const seen = [];
    const perReceiver = receivers.map(() => 0);
    const deadline = Date.now() + 30_000;
    await Promise.all(
      receivers.map(async (r, idx) => {
        let emptyRounds = 0;
        while (Date.now() < deadline && emptyRounds < 2) {
          const batch = await r.receiveMessages(3, { maxWaitTimeInMs: 1_000 });
          if (batch.length === 0) {
            emptyRounds += 1;
            continue;
          }
          emptyRounds = 0;
          for (const m of batch) {
            seen.push(m.messageId);
            perReceiver[idx] += 1;
            await sleep(20);
            await r.completeMessage(m);
          }
        }
      }),
    );
    const dupes = seen.filter((id, i) => seen.indexOf(id) !== i);
    assert.deepEqual(dupes, [], `duplicate deliveries; per receiver ${perReceiver}`);
    assert.deepEqual([...seen].sort(), Array.from({ length: N }, (_, i) => `c-${i}`).sort());
    assert.ok(perReceiver.filter((n) => n > 0).length >= 2, `only one receiver got messages: ${perReceiver}`);
    assert.deepEqual(ids(await receivers[0].peekMessages(50)), []);
  });
});
