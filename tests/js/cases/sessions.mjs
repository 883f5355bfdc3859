// Session-enabled queues and subscriptions: acceptSession / acceptNextSession, session locks
// (conflicts, renewal, expiry), session state, subscribe() on a session receiver, session-scoped
// peek and deferral, and what a session-enabled entity refuses. (Listing sessions is not public
// API in the JS SDK, so it is not tested here.)

import assert from "node:assert/strict";
import { describe } from "node:test";

import { ServiceBusError } from "@azure/service-bus";

import {
  RETRY_OPTIONS,
  approxTime,
  assertEmpty,
  declareQueue,
  declareToml,
  expectError,
  ids,
  kbtest,
  receiveN,
  seq,
  sleep,
  withTimeout,
} from "../harness.mjs";

const S = { requires_session: true };
const Q_FIFO = declareQueue("js-sess-fifo", S);
const Q_NEXT = declareQueue("js-sess-next", S);
const Q_WAIT = declareQueue("js-sess-wait", S);
const Q_EMPTY = declareQueue("js-sess-empty", S);
const Q_LOCKED = declareQueue("js-sess-locked", S);
const Q_STATE = declareQueue("js-sess-state", { requires_session: true, lock_duration: "10s" });
const Q_EXPIRE = declareQueue("js-sess-expire", { requires_session: true, lock_duration: "2s", max_delivery_count: 10 });
const Q_SUBSCRIBE = declareQueue("js-sess-subscribe", S);
const Q_PEEK = declareQueue("js-sess-peek-defer", S);
const Q_REFUSE = declareQueue("js-sess-refuse", S);
const T_SESS = "js-sess-topic";

declareToml(`
[[topics]]
name = "${T_SESS}"
[[topics.subscriptions]]
name = "sess"
requires_session = true
[[topics.subscriptions]]
name = "plain"
`);

/** Session receiver options: no client-side auto-renewal, so the tests see the broker's lock as it is. */
const NO_RENEW = Object.freeze({ maxAutoLockRenewalDurationInMs: 0 });

function msgs(sessionId, prefix, n) {
  return Array.from({ length: n }, (_, i) => ({ body: `${prefix}${i}`, messageId: `${prefix}${i}`, sessionId }));
}

describe("sessions", () => {
  kbtest("acceptSession(queue, id): that session's messages in FIFO order, sessionId and lock set, complete", async ({ client }) => {
    const sender = client.createSender(Q_FIFO);
    // interleave two sessions in one batch and one more send
    const a = msgs("alpha", "a-", 5);
    const b = msgs("beta", "b-", 3);
    await sender.sendMessages([a[0], b[0], a[1], a[2], b[1], a[3]]);
    await sender.sendMessages([b[2], a[4]]);

    const t0 = Date.now();
    const receiver = await client.acceptSession(Q_FIFO, "alpha", NO_RENEW);
    assert.equal(receiver.sessionId, "alpha");
    // default lock_duration 60 s
    approxTime(assert, receiver.sessionLockedUntilUtc, t0 + 60_000, 5_000, "sessionLockedUntilUtc");

    const got = await receiveN(receiver, 5);
    assert.deepEqual(ids(got), ["a-0", "a-1", "a-2", "a-3", "a-4"]);
    for (const m of got) {
      assert.equal(m.sessionId, "alpha", `sessionId of ${m.messageId}`);
      assert.equal(m.deliveryCount, 0);
    }
    const seqs = got.map(seq);
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i] > seqs[i - 1], `sequence numbers not increasing: ${seqs}`);
    for (const m of got) await receiver.completeMessage(m);
    await assertEmpty(receiver, assert);
    await receiver.close();

    // the other session is untouched, and a completed session stays empty for the next holder
    const rb = await client.acceptSession(Q_FIFO, "beta", NO_RENEW);
    const gotB = await receiveN(rb, 3);
    assert.deepEqual(ids(gotB), ["b-0", "b-1", "b-2"]);
    assert.ok(gotB.every((m) => m.sessionId === "beta"));
    for (const m of gotB) await rb.completeMessage(m);
    await assertEmpty(rb, assert);
    await rb.close();
    const again = await client.acceptSession(Q_FIFO, "alpha", NO_RENEW);
    await assertEmpty(again, assert, 1_000);
  });

  kbtest("acceptNextSession picks an unlocked session that has messages; closing a receiver frees its session", async ({ client, newClient }) => {
    const sender = client.createSender(Q_NEXT);
    await sender.sendMessages([...msgs("held", "h-", 2), ...msgs("free", "f-", 2)]);
    const held = await client.acceptSession(Q_NEXT, "held", NO_RENEW);

    const quick = newClient(undefined, { retryOptions: { ...RETRY_OPTIONS, timeoutInMs: 3_000 } });
    const next = await withTimeout(quick.acceptNextSession(Q_NEXT, NO_RENEW), 8_000, "acceptNextSession");
    assert.equal(next.sessionId, "free");
    assert.ok(next.sessionLockedUntilUtc instanceof Date && next.sessionLockedUntilUtc.getTime() > Date.now());
    const got = await receiveN(next, 2);
    assert.deepEqual(ids(got), ["f-0", "f-1"]);
    for (const m of got) await next.completeMessage(m);

    // both sessions with messages are locked now ("free" is held, though empty)
    const err = await expectError(quick.acceptNextSession(Q_NEXT, NO_RENEW), "acceptNextSession with all sessions locked", 10_000);
    assert.equal(err.code, "ServiceTimeout", `code=${err.code} message=${err.message}`);

    await held.close();
    const after = await withTimeout(quick.acceptNextSession(Q_NEXT, NO_RENEW), 8_000, "acceptNextSession after close");
    assert.equal(after.sessionId, "held");
    const gotH = await receiveN(after, 2);
    assert.deepEqual(ids(gotH), ["h-0", "h-1"]);
    for (const m of gotH) await after.completeMessage(m);
    await assertEmpty(after, assert, 1_000);
  });

  kbtest("acceptNextSession with nothing available: ServiceTimeout after the client's timeout (com.microsoft:timeout), not 60 s", async ({ newClient }) => {
    // The SDK sends retryOptions.timeoutInMs (minus a little jitter) as the link property
    // com.microsoft:timeout for next-available sessions; the broker refuses the attach with
    // com.microsoft:timeout when it runs out, which the SDK maps to ServiceTimeout. The SDK's own
    // link-open timeout is rhea-promise's 60 s, so a quick failure must come from the broker.
    const client = newClient(undefined, { retryOptions: { ...RETRY_OPTIONS, timeoutInMs: 2_000 } });
    const t0 = Date.now();
    const err = await expectError(client.acceptNextSession(Q_EMPTY, NO_RENEW), "acceptNextSession on an empty queue", 15_000);
    const elapsed = Date.now() - t0;
    assert.ok(err instanceof ServiceBusError, `not a ServiceBusError: ${err?.name}: ${err?.message}`);
    assert.equal(err.code, "ServiceTimeout", `code=${err.code} message=${err.message}`);
    assert.doesNotMatch(err.message, /within allocated time/, "the SDK's own timeout fired, not the broker's refusal");
    assert.ok(elapsed >= 1_500, `refused after ${elapsed} ms, before the requested ~2000 ms timeout`);
    assert.ok(elapsed < 6_000, `refused after ${elapsed} ms; the broker should honour com.microsoft:timeout (~2000 ms)`);
  });

  kbtest("acceptNextSession waits for a session: a message sent while it waits is delivered to it", async ({ client, newClient }) => {
    const waiting = newClient(undefined, { retryOptions: { ...RETRY_OPTIONS, timeoutInMs: 10_000 } });
    const t0 = Date.now();
    const pending = waiting.acceptNextSession(Q_WAIT, NO_RENEW);
    pending.catch(() => {}); // observed below
    await sleep(700);
    await client.createSender(Q_WAIT).sendMessages({ body: "late", messageId: "late-1", sessionId: "late" });
    const receiver = await withTimeout(pending, 12_000, "acceptNextSession while a session appears");
    const elapsed = Date.now() - t0;
    assert.equal(receiver.sessionId, "late");
    assert.ok(elapsed < 5_000, `the waiting acceptNextSession took ${elapsed} ms after the send`);
    const got = await receiveN(receiver, 1);
    assert.deepEqual(ids(got), ["late-1"]);
    await receiver.completeMessage(got[0]);
  });

  kbtest("a second acceptSession for a locked session fails with SessionCannotBeLocked", async ({ client, newClient }) => {
    await client.createSender(Q_LOCKED).sendMessages(msgs("busy", "busy-", 1));
    const first = await client.acceptSession(Q_LOCKED, "busy", NO_RENEW);
    assert.equal(first.sessionId, "busy");

    const other = newClient();
    const t0 = Date.now();
    const err = await expectError(other.acceptSession(Q_LOCKED, "busy", NO_RENEW), "acceptSession on a locked session", 10_000);
    assert.ok(err instanceof ServiceBusError, `not a ServiceBusError: ${err?.name}: ${err?.message}`);
    assert.equal(err.code, "SessionCannotBeLocked", `code=${err.code} message=${err.message}`);
    assert.ok(Date.now() - t0 < 5_000, "the refusal should be immediate");
    // the same client (same connection) is refused as well
    const err2 = await expectError(client.acceptSession(Q_LOCKED, "busy", NO_RENEW), "acceptSession on a locked session (same client)", 10_000);
    assert.equal(err2.code, "SessionCannotBeLocked", `code=${err2.code} message=${err2.message}`);

    // the holder is unaffected
    const got = await receiveN(first, 1);
    assert.deepEqual(ids(got), ["busy-0"]);
    await first.completeMessage(got[0]);
    await first.close();

    // released on close
    const later = await withTimeout(other.acceptSession(Q_LOCKED, "busy", NO_RENEW), 8_000, "acceptSession after close");
    assert.equal(later.sessionId, "busy");
    await assertEmpty(later, assert, 1_000);
  });

  kbtest("setSessionState / getSessionState round trip, kept across receivers; renewSessionLock extends the lock", async ({ client }) => {
    await client.createSender(Q_STATE).sendMessages(msgs("st", "st-", 1));
    const r1 = await client.acceptSession(Q_STATE, "st", NO_RENEW);
    const initial = await r1.getSessionState();
    assert.ok(initial === null || initial === undefined, `initial session state: ${JSON.stringify(initial)}`);

    const state = { step: 2, items: ["x", "y"], note: "héllo" };
    await r1.setSessionState(state);
    assert.deepEqual(await r1.getSessionState(), state);
    await r1.setSessionState({ step: 3 });
    assert.deepEqual(await r1.getSessionState(), { step: 3 });

    // lock_duration 10 s
    const before = r1.sessionLockedUntilUtc;
    approxTime(assert, before, Date.now() + 10_000, 3_000, "sessionLockedUntilUtc");
    await sleep(1_200);
    const renewed = await r1.renewSessionLock();
    assert.ok(renewed instanceof Date, `renewSessionLock returned ${renewed}`);
    assert.ok(
      renewed.getTime() >= before.getTime() + 1_000,
      `renewed lock ${renewed.toISOString()} is not later than the first ${before.toISOString()}`,
    );
    approxTime(assert, renewed, Date.now() + 10_000, 2_000, "renewed session lock");
    assert.equal(r1.sessionLockedUntilUtc.getTime(), renewed.getTime(), "receiver.sessionLockedUntilUtc not updated");
    await r1.close();

    const r2 = await client.acceptSession(Q_STATE, "st", NO_RENEW);
    assert.deepEqual(await r2.getSessionState(), { step: 3 }, "session state lost when the session was released");
    const got = await receiveN(r2, 1);
    assert.deepEqual(ids(got), ["st-0"]);
    await r2.completeMessage(got[0]);
    // an emptied session keeps its state too
    await r2.close();
    const r3 = await client.acceptSession(Q_STATE, "st", NO_RENEW);
    assert.deepEqual(await r3.getSessionState(), { step: 3 });
  });

  kbtest("an expired session lock frees the session: another receiver gets the message again, the old one's settle fails", { timeout: 30_000 }, async ({ client, newClient }) => {
    await client.createSender(Q_EXPIRE).sendMessages(msgs("exp", "exp-", 1));
    const r1 = await client.acceptSession(Q_EXPIRE, "exp", NO_RENEW);
    const [m1] = await receiveN(r1, 1);
    assert.equal(m1?.messageId, "exp-0");
    await sleep(3_000); // lock_duration 2 s, no renewal

    const other = newClient();
    const r2 = await withTimeout(other.acceptSession(Q_EXPIRE, "exp", NO_RENEW), 8_000, "acceptSession after the lock expired");
    const [m2] = await receiveN(r2, 1);
    assert.equal(m2?.messageId, "exp-0");
    assert.equal(m2.deliveryCount, 1, "the message received under the lost lock should count as a delivery");
    await r2.completeMessage(m2);

    const err = await expectError(r1.completeMessage(m1), "complete under an expired session lock", 10_000);
    assert.equal(err.code, "SessionLockLost", `code=${err.code} message=${err.message}`);
    await assertEmpty(r2, assert, 1_000);
  });

  kbtest("subscribe() on a session receiver processes all of that session's messages in order", async ({ client }) => {
    await client.createSender(Q_SUBSCRIBE).sendMessages([...msgs("one", "one-", 4), ...msgs("two", "two-", 2)]);
    const receiver = await client.acceptSession(Q_SUBSCRIBE, "one", NO_RENEW);
    const seen = [];
    const errors = [];
    const sub = receiver.subscribe({
      processMessage: async (m) => {
        seen.push([m.messageId, m.sessionId]);
      },
      processError: async (args) => {
        errors.push(`${args.errorSource}: ${args.error?.code} ${args.error?.message}`);
      },
    });
    for (let i = 0; i < 100 && seen.length < 4; i++) await sleep(100);
    await sleep(300); // let the auto-completion of the last message go out
    await sub.close();
    assert.deepEqual(seen, [["one-0", "one"], ["one-1", "one"], ["one-2", "one"], ["one-3", "one"]]);
    assert.deepEqual(errors, []);
    await receiver.close();

    // auto-completed: the session is empty for the next holder; the other session is untouched
    const again = await client.acceptSession(Q_SUBSCRIBE, "one", NO_RENEW);
    await assertEmpty(again, assert, 1_000);
    const two = await client.acceptSession(Q_SUBSCRIBE, "two", NO_RENEW);
    const got = await receiveN(two, 2);
    assert.deepEqual(ids(got), ["two-0", "two-1"]);
    for (const m of got) await two.completeMessage(m);
  });

  kbtest("peekMessages and deferral are scoped to the session", async ({ client }) => {
    await client.createSender(Q_PEEK).sendMessages([
      ...msgs("p1", "p1-", 1),
      ...msgs("p2", "p2-", 2),
      ...msgs("p1", "p1x-", 2),
    ]);
    const r1 = await client.acceptSession(Q_PEEK, "p1", NO_RENEW);
    const peeked = await r1.peekMessages(10);
    assert.deepEqual(ids(peeked), ["p1-0", "p1x-0", "p1x-1"]);
    assert.ok(peeked.every((m) => m.sessionId === "p1"));

    const got = await receiveN(r1, 3);
    assert.deepEqual(ids(got), ["p1-0", "p1x-0", "p1x-1"]);
    await r1.deferMessage(got[1]);
    await r1.completeMessage(got[0]);
    await r1.completeMessage(got[2]);
    await assertEmpty(r1, assert, 1_000);

    const deferredSeq = got[1].sequenceNumber;
    // (the SDK's peek cursor continues after the last peeked message: start from the beginning)
    const fromStart = { fromSequenceNumber: got[0].sequenceNumber };
    const peekDeferred = await r1.peekMessages(10, fromStart);
    assert.deepEqual(ids(peekDeferred), ["p1x-0"]);
    assert.equal(peekDeferred[0].state, "deferred");

    const [d] = await r1.receiveDeferredMessages([deferredSeq]);
    assert.equal(d?.messageId, "p1x-0");
    assert.equal(d.sessionId, "p1");
    await r1.completeMessage(d);
    assert.deepEqual(ids(await r1.peekMessages(10, fromStart)), []);

    // the other session: its own peek, untouched by the above (the SDK keeps one peek cursor per
    // entity and client, so start from the first sequence number again)
    const r2 = await client.acceptSession(Q_PEEK, "p2", NO_RENEW);
    const peeked2 = await r2.peekMessages(10, fromStart);
    assert.deepEqual(ids(peeked2), ["p2-0", "p2-1"]);
    assert.ok(peeked2.every((m) => m.sessionId === "p2"));
    const got2 = await receiveN(r2, 2);
    assert.deepEqual(ids(got2), ["p2-0", "p2-1"]);
    for (const m of got2) await r2.completeMessage(m);
  });

  kbtest("a session-enabled queue refuses messages without a sessionId and non-session receivers", async ({ client }) => {
    const sender = client.createSender(Q_REFUSE);
    const sendErr = await expectError(sender.sendMessages({ body: "no session", messageId: "nosess" }), "send without sessionId", 10_000);
    assert.ok(sendErr instanceof ServiceBusError, `send: not a ServiceBusError: ${sendErr?.name}: ${sendErr?.message}`);
    // com.microsoft:argument-error has no ServiceBusError code of its own: GeneralError, message prefixed
    assert.equal(sendErr.code, "GeneralError", `send: code=${sendErr.code} message=${sendErr.message}`);
    assert.match(sendErr.message, /^ArgumentError: .*SessionId/, `send: message=${sendErr.message}`);

    const plain = client.createReceiver(Q_REFUSE);
    const recvErr = await expectError(plain.receiveMessages(1, { maxWaitTimeInMs: 2_000 }), "non-session receive on a session queue", 10_000);
    assert.ok(recvErr instanceof ServiceBusError, `receive: not a ServiceBusError: ${recvErr?.name}: ${recvErr?.message}`);
    // amqp:not-allowed (InvalidOperationError) has no ServiceBusError code of its own either
    assert.equal(recvErr.code, "GeneralError", `receive: code=${recvErr.code} message=${recvErr.message}`);
    assert.match(recvErr.message, /^InvalidOperationError: .*requires sessions/, `receive: message=${recvErr.message}`);

    // the sender link still works for messages with a sessionId
    await sender.sendMessages({ body: "ok", messageId: "withsess", sessionId: "s" });
    const receiver = await client.acceptSession(Q_REFUSE, "s", NO_RENEW);
    const got = await receiveN(receiver, 1);
    assert.deepEqual(ids(got), ["withsess"]);
    await receiver.completeMessage(got[0]);
    await assertEmpty(receiver, assert, 1_000);
  });

  kbtest("a session-enabled subscription: acceptSession(topic, subscription, id) gets that session's copies", async ({ client }) => {
    await client.createSender(T_SESS).sendMessages([
      { body: 1, messageId: "ts-1", sessionId: "t1" },
      { body: 2, messageId: "ts-2", sessionId: "t2" },
      { body: 3, messageId: "ts-3", sessionId: "t1" },
    ]);
    const r1 = await client.acceptSession(T_SESS, "sess", "t1", NO_RENEW);
    assert.equal(r1.sessionId, "t1");
    assert.ok(r1.sessionLockedUntilUtc instanceof Date);
    const got = await receiveN(r1, 2);
    assert.deepEqual(ids(got), ["ts-1", "ts-3"]);
    assert.ok(got.every((m) => m.sessionId === "t1"));
    for (const m of got) await r1.completeMessage(m);
    await assertEmpty(r1, assert, 1_000);

    const r2 = await client.acceptNextSession(T_SESS, "sess", NO_RENEW);
    assert.equal(r2.sessionId, "t2");
    const got2 = await receiveN(r2, 1);
    assert.deepEqual(ids(got2), ["ts-2"]);
    await r2.completeMessage(got2[0]);

    // a non-session subscription of the same topic gets every message without sessions
    const plain = client.createReceiver(T_SESS, "plain");
    const all = await receiveN(plain, 3);
    assert.deepEqual(ids(all), ["ts-1", "ts-2", "ts-3"]);
    assert.deepEqual(all.map(seq), [...got, ...got2].map(seq).sort((x, y) => x - y));
    for (const m of all) await plain.completeMessage(m);

    // and the session-enabled subscription refuses a non-session receiver
    const err = await expectError(
      client.createReceiver(T_SESS, "sess").receiveMessages(1, { maxWaitTimeInMs: 2_000 }),
      "non-session receive on a session subscription",
      10_000,
    );
    assert.ok(err instanceof ServiceBusError, `not a ServiceBusError: ${err?.name}: ${err?.message}`);
    assert.match(err.message, /^InvalidOperationError: .*requires sessions/, `code=${err.code} message=${err.message}`);
  });
});
