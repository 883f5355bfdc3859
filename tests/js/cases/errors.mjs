// Error mapping seen by @azure/service-bus: missing entities and bad credentials.

import assert from "node:assert/strict";
import { describe } from "node:test";

import {
  assertConnectionAlive,
  assertEmpty,
  declareQueue,
  expectError,
  ids,
  kbtest,
  receiveN,
  withTimeout,
} from "../harness.mjs";

const Q_AUTH = declareQueue("js-auth");
const MISSING = "js-no-such-queue";

describe("errors", () => {
  kbtest("missing queue: send fails with MessagingEntityNotFound", { timeout: 30_000 }, async ({ client }) => {
    const err = await expectError(client.createSender(MISSING).sendMessages({ body: "x" }), "send to a missing queue");
    assert.equal(err.code, "MessagingEntityNotFound", `code=${err.code} message=${err.message}`);
    assert.equal(err.retryable, false);
    assert.match(err.message, /The messaging entity .* could not be found/);
    await assertConnectionAlive(assert, client, "after the refused sender link");
  });

  kbtest("missing queue: receive fails with MessagingEntityNotFound", { timeout: 30_000 }, async ({ client }) => {
    const err = await expectError(
      client.createReceiver(MISSING).receiveMessages(1, { maxWaitTimeInMs: 2_000 }),
      "receive from a missing queue",
    );
    assert.equal(err.code, "MessagingEntityNotFound", `code=${err.code} message=${err.message}`);
    await assertConnectionAlive(assert, client, "after the refused link");
  });

  kbtest("missing queue: peek ($management) fails with MessagingEntityNotFound", { timeout: 30_000 }, async ({ client }) => {
    const err = await expectError(client.createReceiver(MISSING).peekMessages(1), "peek on a missing queue");
    assert.equal(err.code, "MessagingEntityNotFound", `code=${err.code} message=${err.message}`);
    await assertConnectionAlive(assert, client, "after the refused link");
  });

  kbtest("missing queue: dead-letter sub-queue receive fails with MessagingEntityNotFound", { timeout: 30_000 }, async ({ client }) => {
    const err = await expectError(
      client.createReceiver(MISSING, { subQueueType: "deadLetter" }).receiveMessages(1, { maxWaitTimeInMs: 2_000 }),
      "receive from the dead-letter queue of a missing queue",
    );
    assert.equal(err.code, "MessagingEntityNotFound", `code=${err.code} message=${err.message}`);
    await assertConnectionAlive(assert, client, "after the refused link");
  });

  kbtest("the connection stays usable after a refused link (not-found), for other entities", { timeout: 30_000 }, async ({ newClient }) => {
    // no retries and a short operation timeout: if the connection died, fail (and let go) quickly
    const client = newClient(undefined, { retryOptions: { maxRetries: 0, timeoutInMs: 8_000 } });
    const err = await expectError(client.createSender(MISSING).sendMessages({ body: "x" }), "send to a missing queue");
    assert.equal(err.code, "MessagingEntityNotFound", `code=${err.code} message=${err.message}`);
    // Same client => same AMQP connection. rhea tears the connection down ("Invalid handle") if the
    // broker sends anything for the refused link after the detach handshake finished.
    const sender = client.createSender(Q_AUTH);
    await withTimeout(sender.sendMessages({ body: "still fine", messageId: "after-404" }), 10_000, "send after the refusal");
    const ok = client.createReceiver(Q_AUTH);
    const got = await withTimeout(receiveN(ok, 1), 10_000, "receive after the refusal");
    assert.deepEqual(ids(got), ["after-404"]);
    await ok.completeMessage(got[0]);
  });

  kbtest("wrong SAS key: send and receive fail with UnauthorizedAccess; nothing is enqueued", async ({ broker, newClient }) => {
    const bad = newClient(broker.connStr("d3Jvbmcta2V5LXZhbHVl"));
    const sendErr = await expectError(bad.createSender(Q_AUTH).sendMessages({ body: "nope", messageId: "bad-key" }), "send with a wrong key");
    assert.equal(sendErr.code, "UnauthorizedAccess", `send: code=${sendErr.code} message=${sendErr.message}`);

    const recvErr = await expectError(
      bad.createReceiver(Q_AUTH).receiveMessages(1, { maxWaitTimeInMs: 2_000 }),
      "receive with a wrong key",
    );
    assert.equal(recvErr.code, "UnauthorizedAccess", `receive: code=${recvErr.code} message=${recvErr.message}`);

    const peekErr = await expectError(bad.createReceiver(Q_AUTH).peekMessages(1), "peek with a wrong key");
    assert.equal(peekErr.code, "UnauthorizedAccess", `peek: code=${peekErr.code} message=${peekErr.message}`);

    const good = newClient();
    const receiver = good.createReceiver(Q_AUTH);
    assert.deepEqual(ids(await receiver.peekMessages(10)), []);
    await assertEmpty(receiver, assert);
  });

  kbtest("wrong SAS policy name: UnauthorizedAccess", async ({ broker, newClient }) => {
    const cs = broker.connStr().replace("SharedAccessKeyName=RootManageSharedAccessKey", "SharedAccessKeyName=NoSuchPolicy");
    const bad = newClient(cs);
    const err = await expectError(bad.createSender(Q_AUTH).sendMessages({ body: "nope" }), "send with an unknown policy");
    assert.equal(err.code, "UnauthorizedAccess", `code=${err.code} message=${err.message}`);
  });
});
