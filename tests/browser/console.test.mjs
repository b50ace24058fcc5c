// Browser tests of the console: a real `reelay serve` on a temporary directory, the
// tests' webhook receiver (tests/peers/webhook_receiver.py) failing and then
// succeeding, and Debian's chromium driven by playwright-core. Each scenario is one the
// issue asks the console to show; screenshots of the main pages go to docs/screenshots/.
//
//   REELAY_BIN=target/debug/reelay node tests/browser/console.test.mjs
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const bin = process.env.REELAY_BIN || join(root, "target", "debug", "reelay");
const shots = join(root, "docs", "screenshots");
const ADMIN = "browser-test-admin-token";
const children = [];

function start(command, args, env, ready) {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { env: { ...process.env, ...env }, stdio: ["pipe", "pipe", "pipe"] });
    children.push(child);
    let out = "";
    const timer = setTimeout(() => reject(new Error(`${command} did not start: ${out}`)), 30000);
    child.stdout.on("data", (data) => {
      out += data;
      const found = ready(out);
      if (found) { clearTimeout(timer); resolve(found); }
    });
    child.stderr.on("data", (data) => { if (process.env.VERBOSE) process.stderr.write(data); });
    child.on("exit", (code) => reject(new Error(`${command} exited (${code}): ${out}`)));
  });
}

const data = mkdtempSync(join(tmpdir(), "reelay-browser-"));
const receiverPort = await start("python3", [join(root, "tests", "peers", "webhook_receiver.py")], {},
  (out) => out.match(/LISTENING (\d+)/)?.[1]);
const receiver = `http://127.0.0.1:${receiverPort}`;
const server = await start(bin, ["serve"], {
  REELAY_LISTEN: "127.0.0.1:0",
  REELAY_DATABASE_URL: `sqlite://${data}/reelay.db`,
  REELAY_ADMIN_TOKEN: ADMIN,
  REELAY_ALLOW_PRIVATE_DESTINATIONS: "true",
  REELAY_RETRY_SCHEDULE: "300ms,300ms",
  REELAY_LOG: "warn",
}, (out) => out.match(/reelay listening on (\S+)/)?.[1]);

async function api(method, path, body, token = ADMIN) {
  const response = await fetch(`${server}${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

async function hook(path, status) {
  const response = await fetch(`${receiver}/_control/hooks`, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ path, responses: [{ status }] }),
  });
  assert.equal(response.status, 200);
}

function asset(account, guid, name = "asset-updated") {
  return { eventName: name, originator: "browser-tests", tenant: account, versions: ["1.0"],
    timestamp: new Date().toISOString(), guid, assetId: 4242 };
}

async function publish(account, guid, token = ADMIN) {
  return api("POST", `/v1/accounts/${account}/events`, asset(account, guid), token);
}

async function eventually(what, check, within = 15000) {
  const deadline = Date.now() + within;
  for (;;) {
    try { if (await check()) return; } catch (error) { if (Date.now() > deadline) throw error; }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
mkdirSync(shots, { recursive: true });

async function newPage() {
  const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  return page;
}

async function signIn(page, token) {
  await page.goto(`${server}/console`);
  await page.getByLabel("Token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

async function shot(page, name) {
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: false });
}

const acme = (await api("POST", "/v1/accounts/acme/keys", { name: "acme team", scopes: ["publish", "read", "manage"] })).key;
await api("POST", "/v1/accounts/globex/keys", { scopes: ["read"] });
await api("POST", "/v1/accounts/globex/subscriptions", { endpoint: `${receiver}/globex`, events: ["asset-updated"] });
await publish("globex", "globex-1");

const results = [];
async function scenario(name, run) {
  const started = Date.now();
  try {
    await run();
    results.push([name, "ok", Date.now() - started]);
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (error) {
    results.push([name, "FAILED", Date.now() - started]);
    console.log(`FAIL ${name}\n     ${error.stack}`);
  }
}

let subscriptionId = null;

await scenario("an account key sees only its account", async () => {
  const page = await newPage();
  await signIn(page, acme);
  await page.getByRole("heading", { name: "Account acme" }).waitFor();
  for (const name of ["Subscriptions", "Events", "Live tail", "Catalog"]) {
    await page.getByRole("link", { name, exact: true }).waitFor();
  }
  assert.equal(await page.getByRole("link", { name: "Accounts" }).count(), 0, "no accounts list");
  await page.goto(`${server}/console#/accounts/globex/subscriptions`);
  await page.getByRole("heading", { name: "Not your account" }).waitFor();
  assert.equal(await page.getByText(`${receiver}/globex`).count(), 0);
  await page.context().close();
});

await scenario("a failing receiver's attempt shows its status code; redelivered once it succeeds", async () => {
  await hook("/flaky", 500);
  const page = await newPage();
  await signIn(page, acme);
  await page.getByRole("link", { name: "Subscriptions", exact: true }).click();
  await page.getByLabel("Endpoint URL").fill(`${receiver}/flaky`);
  await page.getByLabel("Events").fill("asset-updated");
  await page.getByRole("button", { name: "Create subscription" }).click();
  await page.getByRole("heading", { name: /^Subscription / }).waitFor();
  subscriptionId = (await page.getByRole("heading", { name: /^Subscription / }).textContent()).replace("Subscription ", "");
  for (const name of ["Replay", "Redeliver dead letters", "Send test event"]) {
    await page.getByRole("button", { name, exact: true }).waitFor();
  }
  await publish("acme", "flaky-1", acme);
  await eventually("the dead letter on the page", async () => {
    await page.reload();
    const dead = page.getByRole("table", { name: "Dead letters" });
    return (await dead.getByRole("link", { name: "flaky-1" }).count()) > 0;
  });
  const attempts = page.getByRole("table", { name: "Attempts" });
  await attempts.getByRole("cell", { name: "500", exact: true }).first().waitFor();
  await shot(page, "subscription");
  await hook("/flaky", 200);
  await page.getByRole("button", { name: "Redeliver dead letters" }).click();
  await page.getByText("Redelivering 1 dead letters").waitFor();
  await eventually("no dead letters left", async () => {
    await page.reload();
    return (await page.getByText("No dead letters.").count()) > 0;
  });
  await page.goto(`${server}/console#/accounts/acme/events/flaky-1`);
  const row = page.getByRole("row").filter({ hasText: subscriptionId });
  await row.getByText("delivered", { exact: true }).waitFor();
  await page.context().close();
});

await scenario("the live tail shows an event published from outside within a second", async () => {
  const page = await newPage();
  await signIn(page, acme);
  await page.getByRole("link", { name: "Live tail" }).click();
  await page.getByText("Live: waiting for events.").waitFor();
  const sent = Date.now();
  await publish("acme", "tail-1", acme);
  await page.getByRole("link", { name: "tail-1" }).waitFor({ timeout: 1000 });
  const took = Date.now() - sent;
  assert.ok(took < 1000, `shown after ${took} ms`);
  await shot(page, "live-tail");
  await page.context().close();
});

await scenario("an event found in the log shows its delivery status on each subscription", async () => {
  await hook("/steady", 200);
  await hook("/down", 503);
  const steady = await api("POST", "/v1/accounts/acme/subscriptions", { endpoint: `${receiver}/steady`, events: ["asset-published"] });
  const down = await api("POST", "/v1/accounts/acme/subscriptions", { endpoint: `${receiver}/down`, events: ["asset-published"] });
  await api("POST", "/v1/accounts/acme/events", asset("acme", "multi-1", "asset-published"), acme);
  const page = await newPage();
  await signIn(page, acme);
  await page.getByRole("link", { name: "Events", exact: true }).click();
  await page.getByLabel("Event name").fill("asset-published");
  await page.getByRole("button", { name: "Filter" }).click();
  await page.getByRole("link", { name: "multi-1" }).click();
  await page.getByRole("heading", { name: "Event multi-1" }).waitFor();
  await eventually("steady delivered, down retrying or dead", async () => {
    await page.reload();
    const ok = await page.getByRole("row").filter({ hasText: steady.id }).getByText("delivered", { exact: true }).count();
    const failing = await page.getByRole("row").filter({ hasText: down.id }).getByText(/^(retrying|dead)$/).count();
    return ok > 0 && failing > 0;
  });
  assert.equal(await page.getByRole("row").filter({ hasText: subscriptionId }).count(), 0, "asset-updated only");
  await shot(page, "event-deliveries");
  await page.goto(`${server}/console#/accounts/acme/events`);
  await page.getByRole("link", { name: "multi-1" }).waitFor();
  await shot(page, "events");
  await page.goto(`${server}/console#/accounts/acme/subscriptions`);
  await page.getByRole("link", { name: down.id }).waitFor();
  await shot(page, "subscriptions");
  await page.goto(`${server}/console#/accounts/acme/catalog`);
  await page.getByRole("heading", { name: "Event types" }).waitFor();
  await shot(page, "catalog");
  await page.context().close();
});

await scenario("the admin token sees every account", async () => {
  const page = await newPage();
  await signIn(page, ADMIN);
  await page.getByRole("heading", { name: "Accounts" }).waitFor();
  for (const account of ["acme", "globex"]) {
    await page.getByRole("link", { name: account, exact: true }).waitFor();
  }
  await shot(page, "accounts");
  await page.getByRole("link", { name: "globex", exact: true }).click();
  await page.getByRole("heading", { name: "Account globex" }).waitFor();
  await page.getByRole("link", { name: "Subscriptions", exact: true }).click();
  await page.getByText(`${receiver}/globex`).waitFor();
  await page.goto(`${server}/console#/accounts/acme`);
  await page.getByRole("heading", { name: "Account acme" }).waitFor();
  await page.getByRole("img", { name: /^Events published/ }).waitFor();
  await shot(page, "overview");
  await page.context().close();
});

await scenario("a portal link opens its account, works once, and is refused after it expires", async () => {
  const link = await api("POST", "/v1/accounts/acme/portal-links", {});
  const page = await newPage();
  await page.goto(link.url);
  await page.getByRole("heading", { name: "Account acme" }).waitFor();
  assert.ok(!page.url().includes("rlp_"), "the link's token left the address bar");
  await page.getByRole("link", { name: "Subscriptions", exact: true }).click();
  await page.getByRole("link", { name: subscriptionId }).waitFor();
  await page.goto(`${server}/console#/accounts/globex/subscriptions`);
  await page.getByRole("heading", { name: "Not your account" }).waitFor();
  await page.context().close();

  const again = await newPage();
  await again.goto(link.url);
  await again.getByRole("heading", { name: "Portal link refused" }).waitFor();
  await again.context().close();

  const short = await api("POST", "/v1/accounts/acme/portal-links", { expiresInSeconds: 1 });
  await new Promise((resolve) => setTimeout(resolve, 1500));
  const late = await newPage();
  await late.goto(short.url);
  await late.getByRole("heading", { name: "Portal link refused" }).waitFor();
  await late.context().close();
});

await browser.close();
for (const child of children) child.kill();
rmSync(data, { recursive: true, force: true });
const failed = results.filter(([, state]) => state !== "ok");
console.log(`${results.length - failed.length} passed, ${failed.length} failed`);
process.exit(failed.length ? 1 : 0);
