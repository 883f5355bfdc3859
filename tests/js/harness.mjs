// Harness for the keybus JavaScript real-client suite (@azure/service-bus against a keybus process).
//
// * Queue registry: case modules call `declareQueue(name, props)` at import time; the suite's single
//   keybus process (started lazily by the first test, stopped by PID in a root `after` hook and, as
//   a last resort, on process exit) declares every registered queue in its TOML config.
// * The broker runs `keybus serve --in-memory --amqp-port 0 --http-port 0 --bind 127.0.0.1 --config <toml>`;
//   the ports come from the stdout lines `keybus: amqp|http listening on 127.0.0.1:PORT`, readiness from
//   `GET /health`. stderr goes to a file whose tail is appended to every failing test's error.
// * `kbtest(name, fn)` wraps node:test's `test`: it hands the test a small context (clients that are
//   closed afterwards, the connection string, helpers) and decorates failures with broker diagnostics.
// * `new Broker({ toml, onDisk, extraArgs })` is an additional keybus process (e.g. with `--dev-tls`),
//   started by the first `kbtest(name, { broker }, fn)` that names it; its module stops it by PID.

import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import readline from "node:readline";
import { after, test } from "node:test";
import { fileURLToPath } from "node:url";

import { ServiceBusClient } from "@azure/service-bus";

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = path.resolve(HERE, "..", "..");

export const SAS_POLICY = "RootManageSharedAccessKey";
export const SAS_KEY = "SAS_KEY_VALUE";
const STARTUP_TIMEOUT_MS = 30_000;
const CLOSE_TIMEOUT_MS = 5_000;

/** Retry options for every client: a correct broker needs no retries, and failures must be fast. */
export const RETRY_OPTIONS = Object.freeze({
  maxRetries: 1,
  retryDelayInMs: 200,
  maxRetryDelayInMs: 500,
  timeoutInMs: 15_000,
});

/** Default wait for receive calls (ms). Short so that empty receives return quickly. */
export const MAX_WAIT_MS = 2_000;

// ------------------------------------------------------------------------------------------------
// queue registry
// ------------------------------------------------------------------------------------------------

const QUEUE_KEYS = {
  lock_duration: "string",
  max_delivery_count: "number",
  default_message_time_to_live: "string",
  dead_lettering_on_message_expiration: "boolean",
  requires_duplicate_detection: "boolean",
  duplicate_detection_history_time_window: "string",
  requires_session: "boolean",
  max_message_size: "number",
  max_size_in_megabytes: "number",
};

/** name -> properties (keybus TOML names, see docs/config.md) */
export const QUEUES = new Map();

/** Raw keybus TOML blocks (topics, subscriptions, rules) appended to the suite's config. */
export const EXTRA_TOML = [];

/** Append a raw TOML block (e.g. a `[[topics]]` table); call at import time. */
export function declareToml(block) {
  if (broker.proc) throw new Error("declareToml() after the broker was started");
  if (!EXTRA_TOML.includes(block)) EXTRA_TOML.push(block);
}

/**
 * Register a queue for the suite's broker and return its name. Must be called at import time
 * (before the first test starts the broker).
 */
export function declareQueue(name, props = {}) {
  if (broker.proc) {
    throw new Error(`declareQueue(${JSON.stringify(name)}) after the broker was started`);
  }
  for (const [key, value] of Object.entries(props)) {
    if (!(key in QUEUE_KEYS)) throw new Error(`unknown queue property ${key}`);
    if (typeof value !== QUEUE_KEYS[key]) throw new Error(`queue property ${key} must be a ${QUEUE_KEYS[key]}`);
  }
  if (QUEUES.has(name) && JSON.stringify(QUEUES.get(name)) !== JSON.stringify(props)) {
    throw new Error(`queue ${name} declared twice with different properties`);
  }
  QUEUES.set(name, { ...props });
  return name;
}

function tomlValue(v) {
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number") {
    if (!Number.isInteger(v)) throw new Error(`not an integer: ${v}`);
    return String(v);
  }
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(tomlValue).join(", ")}]`;
  throw new Error(`cannot render ${v} as TOML`);
}

export function renderToml(queues, namespace = "keybus-js-tests") {
  const lines = [
    "[namespace]",
    `name = ${tomlValue(namespace)}`,
    "",
    "[[sas_policies]]",
    `name = ${tomlValue(SAS_POLICY)}`,
    `key = ${tomlValue(SAS_KEY)}`,
    'rights = ["Manage", "Send", "Listen"]',
    "",
  ];
  for (const name of [...queues.keys()].sort()) {
    lines.push("[[queues]]", `name = ${tomlValue(name)}`);
    for (const [k, v] of Object.entries(queues.get(name))) lines.push(`${k} = ${tomlValue(v)}`);
    lines.push("");
  }
  if (queues === QUEUES) lines.push(...EXTRA_TOML);
  return lines.join("\n");
}

// ------------------------------------------------------------------------------------------------
// broker process
// ------------------------------------------------------------------------------------------------

export function keybusBin() {
  const raw = process.env.KEYBUS_BIN || "target/release/keybus";
  return path.isAbsolute(raw) ? raw : path.resolve(REPO_ROOT, raw);
}

export function connectionString(port, { key = SAS_KEY, policy = SAS_POLICY, host = "127.0.0.1" } = {}) {
  return `Endpoint=sb://${host}:${port};SharedAccessKeyName=${policy};SharedAccessKey=${key};UseDevelopmentEmulator=true;`;
}

const AMQP_RE = /keybus: amqp listening on ([0-9A-Za-z.\-[\]:]+):(\d+)\s*$/;
const HTTP_RE = /keybus: http listening on ([0-9A-Za-z.\-[\]:]+):(\d+)\s*$/;
// Printed (with --dev-tls / --tls-cert) before the amqp/http lines.
const AMQPS_RE = /keybus: amqps listening on ([0-9A-Za-z.\-[\]:]+):(\d+)\s*$/;
const HTTPS_RE = /keybus: https listening on ([0-9A-Za-z.\-[\]:]+):(\d+)\s*$/;
const CA_RE = /keybus: development CA at (.+?): trust it in clients/;

export class Broker {
  /**
   * toml: the config text (default: the suite's queue registry, rendered at start);
   * onDisk: store in `<workdir>/data` (`--data-dir`) instead of `--in-memory`;
   * extraArgs: appended to `keybus serve`, e.g. `["--dev-tls", "--amqps-port", "0", "--https-port", "0"]`
   * (then amqpsPort, httpsPort and caPath are set once started).
   */
  constructor({ toml = null, onDisk = false, extraArgs = [] } = {}) {
    this.options = { toml, onDisk, extraArgs: [...extraArgs] };
    this.proc = null;
    this.pid = null;
    this.amqpPort = null;
    this.httpPort = null;
    this.amqpsPort = null; // TLS only
    this.httpsPort = null; // TLS only
    this.caPath = null; // --dev-tls only
    this.stdoutLines = [];
    this.workdir = null;
    this.stderrPath = null;
    this.dataDir = null;
    this.exit = null; // { code, signal } once exited
    this._starting = null;
  }

  /** Start once; later calls return the same promise. */
  ensureStarted() {
    if (!this._starting) this._starting = this._start();
    return this._starting;
  }

  async _start() {
    const bin = keybusBin();
    if (!fs.existsSync(bin)) {
      throw new Error(
        `keybus binary not found at ${bin}; build it with \`cargo build --release -p keybus\` or point KEYBUS_BIN at it`,
      );
    }
    this.workdir = fs.mkdtempSync(path.join(os.tmpdir(), "keybus-js-"));
    const config = path.join(this.workdir, "keybus.toml");
    fs.writeFileSync(config, this.options.toml ?? renderToml(QUEUES));
    this.stderrPath = path.join(this.workdir, "keybus.stderr.log");
    if (this.options.onDisk) this.dataDir = path.join(this.workdir, "data");
    const args = [
      "serve", ...(this.dataDir ? ["--data-dir", this.dataDir] : ["--in-memory"]),
      "--amqp-port", "0", "--http-port", "0",
      "--bind", "127.0.0.1",
      "--config", config,
      ...this.options.extraArgs,
    ];
    // KEYBUS_* variables would override the config (ports, data dir...); only the log filter passes.
    const env = Object.fromEntries(
      Object.entries(process.env).filter(([k]) => !k.startsWith("KEYBUS_") || k === "KEYBUS_LOG"),
    );
    env.RUST_BACKTRACE ??= "1";
    env.RUST_LOG ??= "info";
    const stderrFd = fs.openSync(this.stderrPath, "a");
    fs.writeSync(stderrFd, `===== ${bin} ${args.join(" ")}\n`);
    try {
      this.proc = spawn(bin, args, { cwd: this.workdir, env, stdio: ["ignore", "pipe", stderrFd] });
    } finally {
      fs.closeSync(stderrFd);
    }
    this.pid = this.proc.pid;
    const exited = new Promise((resolve) => {
      this.proc.once("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve();
      });
      this.proc.once("error", (err) => {
        this.exit = { code: null, signal: null, error: err };
        resolve();
      });
    });
    this._exited = exited;
    // Never leave the broker behind, even if the runner dies without running `after` hooks.
    process.once("exit", () => this.killNow());

    const portsReady = new Promise((resolve) => {
      const rl = readline.createInterface({ input: this.proc.stdout });
      rl.on("line", (line) => {
        this.stdoutLines.push(line);
        let m = AMQP_RE.exec(line);
        if (m) this.amqpPort = Number(m[2]);
        m = HTTP_RE.exec(line);
        if (m) this.httpPort = Number(m[2]);
        m = AMQPS_RE.exec(line);
        if (m) this.amqpsPort = Number(m[2]);
        m = HTTPS_RE.exec(line);
        if (m) this.httpsPort = Number(m[2]);
        m = CA_RE.exec(line);
        if (m) this.caPath = m[1];
        if (this.amqpPort && this.httpPort) resolve(true);
      });
    });
    const deadline = Date.now() + STARTUP_TIMEOUT_MS;
    const which = await Promise.race([
      portsReady,
      exited.then(() => "exited"),
      raceTimer(STARTUP_TIMEOUT_MS).then(() => "timeout"),
    ]);
    if (which === "exited") {
      throw new Error(`keybus exited (${JSON.stringify(this.exit)}) before printing its ports\n${this.diagnostics()}`);
    }
    if (which === "timeout") {
      await this.stop();
      throw new Error(`keybus did not print its listening ports within ${STARTUP_TIMEOUT_MS} ms\n${this.diagnostics()}`);
    }
    let last = null;
    while (Date.now() < deadline) {
      if (this.exit) {
        throw new Error(`keybus exited (${JSON.stringify(this.exit)}) before /health answered\n${this.diagnostics()}`);
      }
      try {
        const res = await fetch(`http://127.0.0.1:${this.httpPort}/health`, { signal: AbortSignal.timeout(2000) });
        await res.arrayBuffer();
        if (res.status === 200) return this;
        last = `HTTP ${res.status}`;
      } catch (err) {
        last = String(err);
      }
      await sleep(100);
    }
    await this.stop();
    throw new Error(`GET /health never returned 200 (last: ${last})\n${this.diagnostics()}`);
  }

  alive() {
    return this.proc !== null && this.exit === null;
  }

  killNow() {
    if (this.alive()) {
      try {
        process.kill(this.pid, "SIGKILL");
      } catch {
        // already gone
      }
    }
  }

  /** SIGTERM by PID, SIGKILL after 5 s. */
  async stop() {
    if (!this.alive()) return;
    try {
      process.kill(this.pid, "SIGTERM");
    } catch {
      return;
    }
    const done = await Promise.race([this._exited.then(() => true), raceTimer(5000).then(() => false)]);
    if (!done) {
      this.killNow();
      await Promise.race([this._exited, raceTimer(10_000)]);
    }
  }

  connStr(key = SAS_KEY) {
    if (!this.amqpPort) throw new Error("broker not started");
    return connectionString(this.amqpPort, { key });
  }

  stderrTail(lines = 80) {
    if (!this.stderrPath) return "<broker never started>";
    try {
      return fs.readFileSync(this.stderrPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "<no stderr captured>";
    }
  }

  diagnostics(lines = 80) {
    const status = this.exit ? `keybus exited: ${JSON.stringify(this.exit)}` : `keybus pid ${this.pid} running`;
    return (
      `--- ${status}; workdir ${this.workdir} ---\n` +
      `--- keybus stdout (tail) ---\n${this.stdoutLines.slice(-20).join("\n")}\n` +
      `--- keybus stderr (tail of ${this.stderrPath}) ---\n${this.stderrTail(lines)}`
    );
  }
}

export const broker = new Broker();

// Root-level hook: stop the suite's broker by PID when all tests are done. If the SDK still holds
// timers afterwards (it does after its connection was torn down under it, e.g. 60 s operation
// timeouts), exit anyway after a grace period instead of idling; the results are reported by then.
const EXIT_GRACE_MS = 5_000;
after(async () => {
  await broker.stop();
  setTimeout(() => {
    process.stderr.write(
      `keybus-js: still busy ${EXIT_GRACE_MS} ms after the last test (${process.getActiveResourcesInfo().join(", ")}); exiting\n`,
    );
    process.exit(process.exitCode ?? 0);
  }, EXIT_GRACE_MS).unref();
});

// ------------------------------------------------------------------------------------------------
// clients and the test wrapper
// ------------------------------------------------------------------------------------------------

export function makeClient(connStr, options = {}) {
  const client = new ServiceBusClient(connStr, { retryOptions: { ...RETRY_OPTIONS }, ...options });
  // Record errors rhea raises on the (first) AMQP connection, e.g. protocol violations by the broker
  // (SDK internals, 7.9.5: _connectionContext.connection is rhea-promise's, ._connection is rhea's).
  client.kbConnectionErrors = [];
  client._connectionContext?.connection?._connection?.on?.("error", (e) => {
    client.kbConnectionErrors.push(e instanceof Error ? `${e.name}: ${e.message}` : JSON.stringify(e));
  });
  return client;
}

/**
 * Like node:test's `test(name, [options], fn)`, but `fn` receives a context:
 *   { t, connStr, client, newClient(connStr?, opts?), broker }
 * where `broker` is `options.broker` (another `Broker`, started here on first use) or the suite's.
 * Every client created through it is closed afterwards. On failure the error message gets the
 * broker's stdout/stderr tail appended.
 */
export function kbtest(name, options, fn) {
  if (typeof options === "function") {
    fn = options;
    options = {};
  }
  // options.broker: run against another Broker (started on first use) instead of the suite's.
  const { broker: target = broker, ...testOptions } = options;
  const opts = { timeout: 60_000, ...testOptions };
  return test(name, opts, async (t) => {
    await target.ensureStarted();
    if (!target.alive()) throw new Error(`the test's keybus process is no longer running\n${target.diagnostics()}`);
    const clients = [];
    const newClient = (cs = target.connStr(), o = {}) => {
      const c = makeClient(cs, o);
      clients.push(c);
      return c;
    };
    const ctx = {
      t,
      broker: target,
      connStr: target.connStr(),
      get client() {
        if (!this._client) this._client = newClient();
        return this._client;
      },
      newClient,
    };
    let failed = false;
    try {
      await fn(ctx);
    } catch (err) {
      failed = true;
      const diag = `\n\n${target.diagnostics()}`;
      if (err && typeof err === "object") {
        try {
          err.message = `${err.message}${diag}`;
        } catch {
          t.diagnostic(diag);
        }
        throw err;
      }
      throw new Error(`${String(err)}${diag}`);
    } finally {
      // A hanging close() (seen when the SDK's connection died underneath it) must not hang the suite.
      const closing = Promise.allSettled(clients.map((c) => c.close()));
      const closed = await Promise.race([closing.then(() => true), raceTimer(CLOSE_TIMEOUT_MS).then(() => false)]);
      if (!closed && !failed) {
        // eslint-disable-next-line no-unsafe-finally
        throw new Error(`ServiceBusClient.close() did not finish within ${CLOSE_TIMEOUT_MS} ms\n\n${target.diagnostics()}`);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------------

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class HarnessTimeout extends Error {}

/** Reject with a HarnessTimeout if `promise` does not settle within `ms` (the promise keeps running). */
export function withTimeout(promise, ms, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new HarnessTimeout(`${what}: no result within ${ms} ms`)), ms);
    timer.unref();
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

/** A timer for `Promise.race` that does not keep the process alive. */
function raceTimer(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms).unref());
}

/** Receive until `n` messages arrived or `timeoutMs` passed; never asks for more than missing. */
export async function receiveN(receiver, n, { timeoutMs = 20_000, maxWaitTimeInMs = MAX_WAIT_MS } = {}) {
  const got = [];
  const end = Date.now() + timeoutMs;
  while (got.length < n && Date.now() < end) {
    got.push(...(await receiver.receiveMessages(n - got.length, { maxWaitTimeInMs })));
  }
  return got;
}

/** A receive call returns nothing within `waitMs`. */
export async function assertEmpty(receiver, assert, waitMs = 1_500) {
  const msgs = await receiver.receiveMessages(10, { maxWaitTimeInMs: waitMs });
  assert.deepStrictEqual(
    msgs.map((m) => [seq(m), m.messageId]),
    [],
    "expected no message",
  );
}

/**
 * The client's AMQP connection is still open shortly after an operation (SDK internals, 7.9.5:
 * ServiceBusClient._connectionContext.connection is the rhea-promise Connection). rhea closes the
 * connection on protocol violations such as a frame for an unknown link handle.
 */
export async function assertConnectionAlive(assert, client, what) {
  await sleep(250);
  const conn = client._connectionContext?.connection;
  assert.ok(conn, "no connection on the client");
  const errors = client.kbConnectionErrors ?? [];
  assert.equal(
    conn.isOpen(),
    true,
    `${what}: the client's AMQP connection was closed; rhea connection errors: ${errors.length ? errors.join(" | ") : "none"}`,
  );
}

/** Sequence number (a `Long`) as a JS number. */
export function seq(msg) {
  return msg.sequenceNumber === undefined ? undefined : msg.sequenceNumber.toNumber();
}

export function ids(msgs) {
  return msgs.map((m) => m.messageId);
}

/** `actual` is a Date within `toleranceMs` of `expected` (Date or epoch ms). */
export function approxTime(assert, actual, expected, toleranceMs, what) {
  assert.ok(actual instanceof Date, `${what} is not a Date: ${actual}`);
  const exp = expected instanceof Date ? expected.getTime() : expected;
  const delta = Math.abs(actual.getTime() - exp);
  assert.ok(
    delta <= toleranceMs,
    `${what}=${actual.toISOString()} expected ≈${new Date(exp).toISOString()} (±${toleranceMs} ms), off by ${delta} ms`,
  );
}

/**
 * Await a promise that must reject; returns the error. @azure/core-amqp 4.x wraps the errors of
 * several failed attempts of a retryable operation in an `AggregateError`; that is unwrapped to its
 * last error (all attempts must have failed with the same code), with `attempts` set.
 */
export async function expectError(promise, what, timeoutMs = 20_000) {
  try {
    await withTimeout(promise, timeoutMs, what);
  } catch (err) {
    if (err instanceof HarnessTimeout) throw err;
    if (err instanceof AggregateError && err.errors.length > 0) {
      const codes = err.errors.map((e) => e?.code);
      if (new Set(codes).size !== 1) {
        throw new Error(`${what}: attempts failed with different errors: ${err.errors.map((e) => `${e?.code}: ${e?.message}`).join(" | ")}`);
      }
      const last = err.errors[err.errors.length - 1];
      last.attempts = err.errors.length;
      return last;
    }
    return err;
  }
  throw new Error(`${what}: expected an error, the call succeeded`);
}
