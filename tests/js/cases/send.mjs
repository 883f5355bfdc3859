// Sending: single message, array, createMessageBatch; body kinds; message properties round trip;
// broker-set sequence numbers and timestamps.

import assert from "node:assert/strict";
import { describe } from "node:test";

import { assertEmpty, approxTime, declareQueue, ids, kbtest, receiveN, seq } from "../harness.mjs";

const Q_KINDS = declareQueue("js-send-kinds");
const Q_BODIES = declareQueue("js-send-bodies");
const Q_PROPS = declareQueue("js-send-props");
const Q_TIMES = declareQueue("js-send-times", { lock_duration: "5s" });
const Q_NOID = declareQueue("js-send-no-id");

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

describe("send", () => {
  kbtest("single, array and createMessageBatch arrive in order with increasing sequence numbers", async ({ client }) => {
    const sender = client.createSender(Q_KINDS);
    await sender.sendMessages({ body: "single", messageId: "k-0" });
    await sender.sendMessages([
      { body: "array-1", messageId: "k-1" },
      { body: "array-2", messageId: "k-2" },
      { body: "array-3", messageId: "k-3" },
    ]);
    const batch = await sender.createMessageBatch();
    assert.ok(batch.maxSizeInBytes > 0, `batch.maxSizeInBytes=${batch.maxSizeInBytes}`);
    for (let i = 4; i < 8; i++) {
      assert.equal(batch.tryAddMessage({ body: `batch-${i}`, messageId: `k-${i}`, applicationProperties: { i } }), true);
    }
    assert.equal(batch.count, 4);
    await sender.sendMessages(batch);

    const receiver = client.createReceiver(Q_KINDS);
    const got = await receiveN(receiver, 8);
    assert.deepEqual(ids(got), ["k-0", "k-1", "k-2", "k-3", "k-4", "k-5", "k-6", "k-7"]);
    assert.deepEqual(
      got.map((m) => m.body),
      ["single", "array-1", "array-2", "array-3", "batch-4", "batch-5", "batch-6", "batch-7"],
    );
    // each batched message keeps its own application properties (the envelope's copy is the first one's)
    assert.deepEqual(
      got.slice(4).map((m) => m.applicationProperties?.i),
      [4, 5, 6, 7],
    );
    assert.deepEqual(got.slice(0, 4).map((m) => m.applicationProperties?.i), [undefined, undefined, undefined, undefined]);
    const seqs = got.map(seq);
    for (let i = 1; i < seqs.length; i++) assert.equal(seqs[i], seqs[i - 1] + 1, `sequence numbers ${seqs}`);
    for (const m of got) await receiver.completeMessage(m);
    await assertEmpty(receiver, assert);
  });

  kbtest("a message sent without messageId gets one from the broker and can be completed", async ({ client }) => {
    await client.createSender(Q_NOID).sendMessages([{ body: "anonymous 1" }, { body: "anonymous 2" }]);
    const receiver = client.createReceiver(Q_NOID);
    const got = await receiveN(receiver, 2);
    for (const m of got) {
      assert.match(String(m.messageId), /^[0-9a-f]{32}$/, `messageId ${m.messageId}`);
      await receiver.completeMessage(m); // the SDK's lock renewer needs the id
    }
    assert.notEqual(got[0].messageId, got[1].messageId);
    await assertEmpty(receiver, assert);
  });

  kbtest("body kinds round-trip (string, JSON object, bytes, AMQP value and sequence sections)", async ({ client }) => {
    const sender = client.createSender(Q_BODIES);
    const bytes = Buffer.from([0, 1, 2, 250, 255, 0x7b]); // not valid JSON
    await sender.sendMessages([
      { body: "text body", messageId: "b-str" },
      { body: { a: 1, nested: { list: [1, "two", null] } }, messageId: "b-obj" },
      { body: bytes, messageId: "b-bytes" },
    ]);
    // AmqpAnnotatedMessage (has `bodyType`): the body goes into an amqp-value / amqp-sequence section
    await sender.sendMessages({ body: 12345, bodyType: "value", properties: { messageId: "b-value" } });
    await sender.sendMessages({ body: [[1, "x"], [true]], bodyType: "sequence", properties: { messageId: "b-seq" } });

    const receiver = client.createReceiver(Q_BODIES);
    const got = await receiveN(receiver, 5);
    assert.deepEqual(ids(got), ["b-str", "b-obj", "b-bytes", "b-value", "b-seq"]);
    assert.equal(got[0].body, "text body");
    assert.deepEqual(got[1].body, { a: 1, nested: { list: [1, "two", null] } });
    assert.ok(Buffer.isBuffer(got[2].body), `bytes body came back as ${typeof got[2].body}`);
    assert.deepEqual([...got[2].body], [...bytes]);
    assert.equal(got[3]._rawAmqpMessage.bodyType, "value");
    assert.equal(got[3].body, 12345);
    assert.equal(got[4]._rawAmqpMessage.bodyType, "sequence");
    assert.deepEqual(got[4].body, [[1, "x"], [true]]);
    for (const m of got) await receiver.completeMessage(m);
  });

  kbtest("all client-set properties and application properties round-trip", async ({ client }) => {
    const when = new Date(Date.UTC(2024, 1, 29, 12, 34, 56, 789));
    const sent = {
      body: { hello: "world" },
      messageId: "props-1",
      correlationId: "corr-42",
      subject: "the-subject",
      contentType: "application/json",
      replyTo: "reply-queue",
      replyToSessionId: "reply-session",
      to: "somewhere",
      timeToLive: 3_600_000,
      applicationProperties: {
        str: "value",
        empty: "",
        unicode: "grüße ✓",
        int: 42,
        negative: -7,
        big: 2 ** 40,
        float: 1.5,
        yes: true,
        no: false,
        when,
      },
    };
    const before = Date.now();
    await client.createSender(Q_PROPS).sendMessages(sent);

    // skipConvertingDate: the SDK otherwise turns received timestamps into epoch numbers; with it the
    // Date property must come back as an AMQP timestamp (a Date), proving the broker kept the type.
    const receiver = client.createReceiver(Q_PROPS, { skipConvertingDate: true });
    const [m] = await receiveN(receiver, 1);
    assert.ok(m, "message not received");
    for (const key of ["messageId", "correlationId", "subject", "contentType", "replyTo", "replyToSessionId", "to", "timeToLive"]) {
      assert.equal(m[key], sent[key], `property ${key}`);
    }
    assert.deepEqual(m.body, sent.body);
    const ap = m.applicationProperties;
    assert.ok(ap, "applicationProperties missing");
    assert.equal(ap.str, "value");
    assert.equal(ap.empty, "");
    assert.equal(ap.unicode, "grüße ✓");
    assert.equal(ap.int, 42);
    assert.equal(ap.negative, -7);
    assert.equal(Number(ap.big), 2 ** 40);
    assert.equal(ap.float, 1.5);
    assert.equal(ap.yes, true);
    assert.equal(ap.no, false);
    assert.ok(ap.when instanceof Date, `Date application property came back as ${typeof ap.when}: ${ap.when} (not an AMQP timestamp)`);
    assert.equal(ap.when.getTime(), when.getTime());
    assert.deepEqual(Object.keys(ap).sort(), Object.keys(sent.applicationProperties).sort());
    // expiresAtUtc = enqueuedTimeUtc + timeToLive
    approxTime(assert, m.enqueuedTimeUtc, before, 5_000, "enqueuedTimeUtc");
    assert.ok(m.expiresAtUtc instanceof Date, `expiresAtUtc=${m.expiresAtUtc}`);
    assert.equal(m.expiresAtUtc.getTime(), m.enqueuedTimeUtc.getTime() + sent.timeToLive);
    await receiver.completeMessage(m);
  });

  kbtest("sequence numbers, enqueuedTimeUtc, lockedUntilUtc, lock tokens and delivery count", async ({ client }) => {
    const sender = client.createSender(Q_TIMES);
    const before = Date.now();
    for (let i = 0; i < 3; i++) await sender.sendMessages({ body: i, messageId: `t-${i}` });
    const afterSend = Date.now();

    const receiver = client.createReceiver(Q_TIMES);
    const got = await receiveN(receiver, 3);
    const received = Date.now();
    assert.deepEqual(ids(got), ["t-0", "t-1", "t-2"]);
    const seqs = got.map(seq);
    assert.equal(seqs[0], 1, `first sequence number of a fresh queue: ${seqs}`);
    assert.deepEqual(seqs, [seqs[0], seqs[0] + 1, seqs[0] + 2]);
    const tokens = new Set();
    for (const m of got) {
      assert.equal(m.state, "active");
      assert.equal(m.deliveryCount, 0, `deliveryCount of ${m.messageId}`);
      assert.ok(m.enqueuedTimeUtc instanceof Date, `enqueuedTimeUtc=${m.enqueuedTimeUtc}`);
      assert.ok(
        m.enqueuedTimeUtc.getTime() >= before - 2_000 && m.enqueuedTimeUtc.getTime() <= afterSend + 2_000,
        `enqueuedTimeUtc ${m.enqueuedTimeUtc.toISOString()} not within the send window`,
      );
      // 5 s lock from the moment of delivery
      approxTime(assert, m.lockedUntilUtc, received + 5_000, 2_500, `lockedUntilUtc of ${m.messageId}`);
      assert.match(m.lockToken ?? "", UUID_RE, `lockToken of ${m.messageId}`);
      tokens.add(m.lockToken);
    }
    assert.equal(tokens.size, 3, "lock tokens must be distinct");
    for (let i = 1; i < got.length; i++) {
      assert.ok(got[i].enqueuedTimeUtc >= got[i - 1].enqueuedTimeUtc, "enqueuedTimeUtc must not go backwards");
    }
    for (const m of got) await receiver.completeMessage(m);
  });
});
