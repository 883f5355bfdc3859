// The web console (`/console/`) end to end in a real headless browser: Debian's chromium
// (/usr/bin/chromium, installed by scripts/test; never a browser download) driven by
// playwright-core, against its own keybus (`--dev-tls`, so that the SDK's administration client
// can read the runtime counts the overview must equal). One browser for the whole module, with a
// fresh --user-data-dir; screenshots at 1280x800 go to target/console-screenshots/.
//
// Without /usr/bin/chromium the module's tests are skipped with a message.

import assert from "node:assert/strict";
import fs from "node:fs";
import https from "node:https";
import os from "node:os";
import path from "node:path";
import { after, before, describe } from "node:test";

import { ServiceBusAdministrationClient } from "@azure/service-bus";

import { Broker, connectionString, kbtest, receiveN, REPO_ROOT, SAS_KEY, SAS_POLICY } from "../harness.mjs";

const CHROMIUM = "/usr/bin/chromium";
const HAVE_CHROMIUM = fs.existsSync(CHROMIUM);
const SHOTS = path.join(REPO_ROOT, "target", "console-screenshots");
const READER_KEY = "console-reader-key";

const TOML = `
[namespace]
name = "keybus-js-console"

[[sas_policies]]
name = "${SAS_POLICY}"
key = "${SAS_KEY}"
rights = ["Manage", "Send", "Listen"]

[[sas_policies]]
name = "reader"
key = "${READER_KEY}"
rights = ["Listen"]

[[queues]]
name = "console-q"

[[queues]]
name = "console-dl"

[[queues]]
name = "console-purge"
`;

const consoleBroker = new Broker({
  toml: TOML,
  extraArgs: ["--dev-tls", "--amqps-port", "0", "--https-port", "0"],
});

/** The `keybus: console: URL` line the broker printed. */
async function consoleUrl(broker) {
  for (let i = 0; i < 50; i++) {
    const line = broker.stdoutLines.find((l) => l.startsWith("keybus: console: "));
    if (line) return line.slice("keybus: console: ".length).trim();
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`no console line in the broker's output: ${broker.stdoutLines.join(" | ")}`);
}

function adminClient(broker) {
  const ca = fs.readFileSync(path.resolve(broker.workdir, broker.caPath));
  return new ServiceBusAdministrationClient(
    `Endpoint=sb://localhost:${broker.httpsPort};SharedAccessKeyName=${SAS_POLICY};SharedAccessKey=${SAS_KEY}`,
    { tlsOptions: { ca }, retryOptions: { maxRetries: 0 } },
  );
}

async function cell(page, entity, field) {
  return Number(await page.locator(`td[data-k="${entity}"][data-f="${field}"]`).innerText());
}

/**
 * A screenshot of the page at 1280x800, and an accessibility check of it: a language and a
 * title, one h1 and no skipped heading level, every form control labelled, every button named,
 * and text contrast of at least 4.5:1 (3:1 for large text) against its background.
 */
async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: false });
  const problems = await page.evaluate(() => {
    const out = [];
    if (!document.documentElement.lang) out.push("no lang on <html>");
    if (!document.title.trim()) out.push("no title");
    const headings = [...document.querySelectorAll("h1, h2, h3, h4, h5, h6")];
    if (headings.filter((h) => h.tagName === "H1").length !== 1) out.push("not exactly one h1");
    let level = 0;
    for (const h of headings) {
      const l = Number(h.tagName[1]);
      if (l > level + 1) out.push(`heading level skipped before "${h.textContent.trim()}"`);
      level = l;
    }
    for (const el of document.querySelectorAll("input, textarea, select")) {
      if (el.type === "hidden") continue;
      if (!(el.labels && el.labels.length) && !el.getAttribute("aria-label")) out.push(`unlabelled ${el.outerHTML}`);
    }
    for (const b of document.querySelectorAll("button, a")) {
      if (!b.textContent.trim() && !b.getAttribute("aria-label")) out.push(`unnamed ${b.outerHTML}`);
    }
    const rgb = (c) => (c.match(/[\d.]+/g) || []).map(Number);
    const lum = ([r, g, b]) => {
      const f = (v) => {
        v /= 255;
        return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
      };
      return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
    };
    const background = (el) => {
      for (let e = el; e; e = e.parentElement) {
        const c = rgb(getComputedStyle(e).backgroundColor);
        if (c.length === 3 || (c.length === 4 && c[3] > 0)) return c.slice(0, 3);
      }
      return [255, 255, 255];
    };
    for (const el of document.querySelectorAll("body *")) {
      const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (!text || el.offsetParent === null) continue;
      const s = getComputedStyle(el);
      const [a, b] = [lum(rgb(s.color).slice(0, 3)), lum(background(el))];
      const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
      const size = parseFloat(s.fontSize);
      const large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
      if (ratio < (large ? 3 : 4.5)) out.push(`contrast ${ratio.toFixed(2)} for "${el.textContent.trim().slice(0, 30)}"`);
    }
    return out;
  });
  assert.deepEqual(problems, [], `accessibility of ${name}`);
}

describe("web console in headless chromium", { skip: HAVE_CHROMIUM ? false : `${CHROMIUM} is not installed: the browser test is skipped (scripts/test installs it when CI=true or as root)` }, () => {
  let context = null;
  let page = null;
  let userDataDir = null;
  const cspErrors = [];

  before(async () => {
    const { chromium } = await import("playwright-core");
    userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "keybus-console-chromium-"));
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      viewport: { width: 1280, height: 800 },
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.on("console", (msg) => {
      if (/Content.Security.Policy/i.test(msg.text())) cspErrors.push(msg.text());
    });
  });

  after(async () => {
    await context?.close();
    await consoleBroker.stop();
    if (userDataDir) fs.rmSync(userDataDir, { recursive: true, force: true });
  });

  kbtest("console: overview counts equal the runtime counts and change live within 2 s of a send", { broker: consoleBroker }, async ({ broker, newClient }) => {
    const url = await consoleUrl(broker);
    const client = newClient(connectionString(broker.amqpPort));
    const sender = client.createSender("console-q");
    await sender.sendMessages([{ body: "a" }, { body: "b" }, { body: "c" }]);
    await page.goto(url);
    await page.locator("h1", { hasText: "Entities" }).waitFor();
    assert.equal(new URL(page.url()).search, "", "the one-time token was exchanged and dropped from the address");
    const admin = adminClient(broker);
    for (const q of ["console-q", "console-dl", "console-purge"]) {
      const rt = await admin.getQueueRuntimeProperties(q);
      assert.equal(await cell(page, q, "active"), rt.activeMessageCount, `${q} active`);
      assert.equal(await cell(page, q, "dead_letter"), rt.deadLetterMessageCount, `${q} dead-letter`);
      assert.equal(await cell(page, q, "scheduled"), rt.scheduledMessageCount, `${q} scheduled`);
    }
    assert.equal(await cell(page, "console-q", "active"), 3);
    await shot(page, "overview");
    const started = Date.now();
    await sender.sendMessages({ body: "d" });
    await page.waitForFunction(
      () => document.querySelector('td[data-k="console-q"][data-f="active"]')?.textContent === "4",
      null,
      { timeout: 2000 },
    );
    assert.ok(Date.now() - started <= 2000);
    assert.equal((await admin.getQueueRuntimeProperties("console-q")).activeMessageCount, 4);
    assert.deepEqual(cspErrors, []);
  });

  kbtest("console: a dead letter shows its reason; redrive moves it back with its message id", { broker: consoleBroker }, async ({ broker, newClient }) => {
    const client = newClient(connectionString(broker.amqpPort));
    await client.createSender("console-dl").sendMessages({ body: { n: 1 }, messageId: "dl-original-1" });
    const receiver = client.createReceiver("console-dl");
    const [msg] = await receiveN(receiver, 1);
    await receiver.deadLetterMessage(msg, { deadLetterReason: "PoisonJson", deadLetterErrorDescription: "field n is odd" });
    await page.goto(page.url().replace(/\/console\/.*$/, "/console/browse?e=console-dl&dlq=1"));
    await page.locator(".reason", { hasText: "PoisonJson" }).waitFor();
    assert.ok(await page.getByText("field n is odd").isVisible());
    assert.ok(await page.getByText("dl-original-1").isVisible());
    await shot(page, "dead-letters");
    await page.getByLabel(/Message \d+/).first().check();
    await page.getByRole("button", { name: "Redrive selected" }).click();
    await page.locator("#messages", { hasText: "Redrove 1 message to console-dl" }).waitFor();
    const [back] = await receiveN(receiver, 1);
    assert.equal(back.messageId, "dl-original-1");
    assert.deepEqual(back.body, { n: 1 });
    assert.equal(back.deliveryCount, 0);
    await receiver.completeMessage(back);
    const rt = await adminClient(broker).getQueueRuntimeProperties("console-dl");
    assert.equal(rt.deadLetterMessageCount, 0);
    assert.equal(rt.activeMessageCount, 0);
    assert.deepEqual(cspErrors, []);
  });

  kbtest("console: purge needs the typed confirmation", { broker: consoleBroker }, async ({ broker, newClient }) => {
    const client = newClient(connectionString(broker.amqpPort));
    await client.createSender("console-purge").sendMessages([{ body: 1 }, { body: 2 }]);
    await page.goto(page.url().replace(/\/console\/.*$/, "/console/browse?e=console-purge"));
    const admin = adminClient(broker);
    await page.getByLabel(/Type console-purge to purge/).fill("console");
    await page.getByRole("button", { name: "Purge" }).click();
    await page.locator("#messages", { hasText: "type the entity path" }).waitFor();
    assert.equal((await admin.getQueueRuntimeProperties("console-purge")).activeMessageCount, 2);
    await page.getByLabel(/Type console-purge to purge/).fill("console-purge");
    await page.getByRole("button", { name: "Purge" }).click();
    await page.locator("#messages", { hasText: "Purged 2 messages from console-purge" }).waitFor();
    await shot(page, "purge");
    assert.equal((await admin.getQueueRuntimeProperties("console-purge")).activeMessageCount, 0);
  });

  kbtest("console: send a test message that the SDK receives", { broker: consoleBroker }, async ({ broker, newClient }) => {
    await page.goto(page.url().replace(/\/console\/.*$/, "/console/browse?e=console-q"));
    await page.getByLabel("Body").fill('{"hello":"console"}');
    await page.getByLabel("Content type").fill("application/json");
    await page.getByLabel("Message id").fill("from-the-console");
    await page.getByLabel("Correlation id").fill("corr-7");
    await page.getByLabel(/Application properties/).fill("origin=browser");
    await page.getByRole("button", { name: "Send", exact: true }).click();
    await page.locator("#messages", { hasText: "Sent 1 message to console-q" }).waitFor();
    await shot(page, "browse-send");
    const client = newClient(connectionString(broker.amqpPort));
    const receiver = client.createReceiver("console-q", { receiveMode: "receiveAndDelete" });
    const got = await receiveN(receiver, 5);
    const mine = got.find((m) => m.messageId === "from-the-console");
    assert.ok(mine, `received ${got.map((m) => m.messageId).join(", ")}`);
    assert.equal(mine.correlationId, "corr-7");
    assert.equal(mine.applicationProperties.origin, "browser");
  });

  kbtest("console: served over HTTPS too, with a Secure session cookie", { broker: consoleBroker }, async ({ broker }) => {
    const ca = fs.readFileSync(path.resolve(broker.workdir, broker.caPath));
    const body = `key_name=${encodeURIComponent(SAS_POLICY)}&key=${encodeURIComponent(SAS_KEY)}`;
    const res = await new Promise((resolve, reject) => {
      const req = https.request(
        {
          host: "localhost",
          port: broker.httpsPort,
          ca,
          method: "POST",
          path: "/console/signin",
          headers: {
            "content-type": "application/x-www-form-urlencoded",
            "content-length": Buffer.byteLength(body),
            "x-keybus-csrf": "signin",
          },
        },
        (r) => {
          r.resume();
          r.on("end", () => resolve(r));
        },
      );
      req.on("error", reject);
      req.end(body);
    });
    assert.equal(res.statusCode, 200);
    const cookie = String(res.headers["set-cookie"]);
    assert.match(cookie, /; HttpOnly/);
    assert.match(cookie, /; SameSite=Strict/);
    assert.match(cookie, /; Secure/);
    assert.match(String(res.headers["content-security-policy"]), /script-src 'self'/);
  });

  kbtest("console: a Receiver sees no send control; forged POSTs are refused", { broker: consoleBroker }, async () => {
    const base = page.url().replace(/\/console\/.*$/, "/console/");
    await context.clearCookies();
    await page.goto(base);
    await page.locator("h1", { hasText: "Sign in" }).waitFor();
    await shot(page, "signin");
    await page.getByLabel("SAS key name").fill("reader");
    await page.getByLabel("SAS key", { exact: true }).fill(READER_KEY);
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.locator(".who", { hasText: "sas:reader" }).waitFor();
    await page.goto(`${base}browse?e=console-q`);
    await page.locator("h1", { hasText: "console-q" }).waitFor();
    assert.equal(await page.getByRole("button", { name: "Send", exact: true }).count(), 0);
    assert.equal(await page.getByRole("button", { name: "Purge" }).count(), 0);
    await page.goto(`${base}browse?e=console-q&dlq=1`);
    assert.equal(await page.getByRole("button", { name: /Redrive/ }).count(), 0);
    await shot(page, "receiver");
    const statuses = await page.evaluate(async () => {
      const form = { "content-type": "application/x-www-form-urlencoded" };
      const csrf = document.querySelector('meta[name="keybus-csrf"]').getAttribute("content");
      const noHeader = await fetch("/console/send?e=console-q", { method: "POST", headers: form, body: "body=x" });
      const withHeader = await fetch("/console/send?e=console-q", {
        method: "POST",
        headers: { ...form, "X-Keybus-Csrf": csrf },
        body: "body=x",
      });
      return [noHeader.status, withHeader.status];
    });
    assert.deepEqual(statuses, [403, 403]);
    assert.deepEqual(cspErrors, []);
  });
});
