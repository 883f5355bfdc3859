// AMQP over secure WebSockets: a second keybus process started with `--dev-tls` (on-disk store, its
// own config) serves `wss://localhost:<amqps port>/$servicebus/websocket` (subprotocol AMQPWSB10);
// @azure/service-bus sends, receives and completes through the `ws` package, trusting the
// development CA from `<data-dir>/tls/ca.pem`. Without that CA the connection is refused.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { after, describe } from "node:test";

import { isServiceBusError } from "@azure/service-bus";
import WebSocket from "ws";

import { assertEmpty, Broker, expectError, ids, kbtest, receiveN, renderToml, SAS_KEY, SAS_POLICY } from "../harness.mjs";

const Q_WS = "js-ws-queue";
// Node's codes for a server certificate that does not chain to a trusted CA.
const TLS_VERIFY_CODES = [
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "DEPTH_ZERO_SELF_SIGNED_CERT",
];

const tls = new Broker({
  toml: renderToml(new Map([[Q_WS, {}]]), "keybus-js-websocket"),
  onDisk: true,
  extraArgs: ["--dev-tls", "--amqps-port", "0", "--https-port", "0"],
});

/** No UseDevelopmentEmulator: the SDK uses TLS, and with webSocketOptions it dials wss://host:port/. */
function tlsConnStr() {
  assert.ok(tls.amqpsPort, `no amqps port in the broker's output: ${tls.stdoutLines.join(" | ")}`);
  return `Endpoint=sb://localhost:${tls.amqpsPort};SharedAccessKeyName=${SAS_POLICY};SharedAccessKey=${SAS_KEY}`;
}

/** `ws`'s WebSocket, recording every socket the SDK (rhea) opens through it. */
function recordingWebSocket() {
  const sockets = [];
  class RecordingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  return { RecordingWebSocket, sockets };
}

describe("websocket (AMQP over wss, --dev-tls)", () => {
  after(() => tls.stop());

  kbtest("send, receive and complete over wss with the development CA (incl. a 100 KB message)", { broker: tls }, async ({ broker, newClient }) => {
    assert.ok(broker.caPath, `no development CA line in the broker's output: ${broker.stdoutLines.join(" | ")}`);
    assert.equal(broker.caPath, path.join(broker.dataDir, "tls", "ca.pem"));
    const ca = fs.readFileSync(broker.caPath);
    const { RecordingWebSocket, sockets } = recordingWebSocket();
    const client = newClient(tlsConnStr(), {
      webSocketOptions: { webSocket: RecordingWebSocket, webSocketConstructorOptions: { ca } },
    });

    const big = randomBytes(100 * 1024); // > 64 KB: several AMQP transfer frames / a 64-bit WebSocket length
    const sender = client.createSender(Q_WS);
    await sender.sendMessages({ body: "ws-text", messageId: "ws-0" });
    await sender.sendMessages([
      { body: { n: 1, s: "json over wss" }, messageId: "ws-1", applicationProperties: { via: "wss" } },
      { body: big, messageId: "ws-big" },
    ]);

    const receiver = client.createReceiver(Q_WS);
    const got = await receiveN(receiver, 3);
    assert.deepEqual(ids(got), ["ws-0", "ws-1", "ws-big"]);
    assert.equal(got[0].body, "ws-text");
    assert.deepEqual(got[1].body, { n: 1, s: "json over wss" });
    assert.equal(got[1].applicationProperties?.via, "wss");
    assert.ok(Buffer.isBuffer(got[2].body), `large body came back as ${typeof got[2].body}`);
    assert.equal(got[2].body.length, big.length);
    assert.ok(got[2].body.equals(big), "large body differs");
    for (const m of got) await receiver.completeMessage(m);
    await assertEmpty(receiver, assert);

    // It really went over WebSockets, to the documented path, with the AMQP subprotocol.
    assert.ok(sockets.length >= 1, "the SDK opened no WebSocket");
    for (const s of sockets) {
      assert.equal(s.url, `wss://localhost:${broker.amqpsPort}/$servicebus/websocket`);
      assert.equal(s.protocol, "AMQPWSB10", "subprotocol chosen by the broker");
    }
    assert.equal(sockets.filter((s) => s.readyState === WebSocket.OPEN).length, 1, "one open WebSocket for the client");
  });

  kbtest("without the development CA the wss connection is refused", { broker: tls, timeout: 20_000 }, async ({ broker, newClient }) => {
    const { RecordingWebSocket, sockets } = recordingWebSocket();
    const client = newClient(tlsConnStr(), {
      webSocketOptions: { webSocket: RecordingWebSocket },
      retryOptions: { maxRetries: 0, retryDelayInMs: 100, maxRetryDelayInMs: 100, timeoutInMs: 3_000 },
    });
    const started = Date.now();
    const err = await expectError(client.createSender(Q_WS).sendMessages({ body: "untrusted" }), "send without the CA", 10_000);
    const elapsed = Date.now() - started;
    assert.ok(sockets.length >= 1, "the SDK opened no WebSocket");
    // @azure/service-bus 7.9.5 passes the WebSocket's TLS error through as it is (an Error with Node's
    // verification code, e.g. UNABLE_TO_VERIFY_LEAF_SIGNATURE), not as a ServiceBusError.
    const what = `${err?.name}: ${err?.message} (code ${err?.code})`;
    assert.ok(err instanceof Error, `not an Error: ${what}`);
    assert.ok(isServiceBusError(err) || TLS_VERIFY_CODES.includes(err.code), `not a certificate verification error: ${what}`);
    assert.match(err.message, /certificate/i, `error does not mention the certificate: ${what}`);
    assert.ok(elapsed < 8_000, `failing took ${elapsed} ms`);
    assert.ok(broker.alive(), "the broker died");
  });
});
