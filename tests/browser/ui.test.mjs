// The web UI in real headless Chromium against a real relay (the call-coach
// binary in $UI_TEST_BIN). Events are published with POST /event and the
// test asserts what the page shows. Screenshots go to $UI_ARTIFACTS.
// Run by tests/it/web_ui.rs (cargo test), or: node ui.test.mjs
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import assert from "node:assert/strict";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

const BIN = process.env.UI_TEST_BIN;
const OUT = process.env.UI_ARTIFACTS || "ui-artifacts";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
assert.ok(BIN, "set UI_TEST_BIN to the call-coach binary");
fs.mkdirSync(OUT, { recursive: true });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

class Relay {
  constructor(port, dir, env = {}) {
    this.port = port; this.dir = dir; this.env = env; this.base = `http://127.0.0.1:${port}`;
    this.log = "";
  }
  async start() {
    // CALL_COACH_* variables are configuration to the binary: pass none.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("CALL_COACH_")));
    this.child = spawn(BIN, ["relay"], {
      env: { ...env, RELAY_LISTEN: `127.0.0.1:${this.port}`, STATE_DIR: this.dir, RUST_LOG: "warn", ...this.env },
      stdio: ["ignore", "ignore", "pipe"],
    });
    this.child.stderr.on("data", (d) => { this.log += d; });
    for (let i = 0; i < 200; i++) {
      try { if ((await fetch(this.base + "/healthz")).ok) return; } catch {}
      await sleep(25);
    }
    throw new Error("relay did not start:\n" + this.log);
  }
  async kill() {
    const gone = new Promise((r) => this.child.once("exit", r));
    this.child.kill("SIGKILL");
    await gone;
  }
  async publish(ev, token) {
    const headers = { "content-type": "application/json" };
    if (token) headers.authorization = "Bearer " + token;
    const r = await fetch(this.base + "/event", { method: "POST", headers, body: JSON.stringify(ev) });
    assert.equal(r.status, 202, await r.text());
  }
}

const results = [];
async function check(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push([name, "ok"]);
    console.log(`ok   ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    results.push([name, "FAILED"]);
    console.log(`FAIL ${name}\n${e.stack || e}`);
  }
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "cc-ui-"));
const relay = new Relay(await freePort(), path.join(tmp, "state"));
await relay.start();
const browser = await chromium.launch({
  executablePath: CHROMIUM,
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
const context = await browser.newContext({ viewport: { width: 1366, height: 768 }, locale: "es-ES" });
const newPage = async (query) => {
  const page = await context.newPage();
  page.on("pageerror", (e) => console.log("page error:", e.message));
  await page.goto(relay.base + "/" + query);
  return page;
};
const tr = (callId, speaker, utteranceId, text, final, startMs = 0) => ({
  type: "transcript", callId, speaker, utteranceId, text, final, startMs, endMs: startMs + 1000,
});

await check("the agent view follows the agent's call: transcript, tips, checklist, metrics, summary", async () => {
  const page = await newPage("?agent=PJSIP/200");
  await page.getByText("Esperando una llamada").waitFor();
  await relay.publish({ type: "call.started", callId: "c1", agent: "PJSIP/200", caller: "Cliente <5551234>", direction: "inbound" });
  await page.locator("#call-info", { hasText: "Cliente <5551234>" }).waitFor({ timeout: 5000 });
  // A partial grows, then its final replaces it in place.
  await relay.publish(tr("c1", "customer", "u1", "Quiero can", false));
  const u1 = page.locator('#transcript li[data-key="customer:u1"]');
  await u1.locator(".text", { hasText: "Quiero can" }).waitFor();
  assert.ok(await u1.evaluate((li) => li.classList.contains("partial")));
  await relay.publish(tr("c1", "customer", "u1", "Quiero cancelar el contrato.", true));
  await u1.locator(".text", { hasText: "Quiero cancelar el contrato." }).waitFor();
  assert.equal(await page.locator('#transcript li[data-key="customer:u1"]').count(), 1);
  assert.ok(!(await u1.evaluate((li) => li.classList.contains("partial"))));
  assert.ok(await u1.evaluate((li) => li.classList.contains("customer")));
  await relay.publish(tr("c1", "agent", "a1", "Buenos días, le informo que esta llamada puede ser grabada.", true, 1000));
  const a1 = page.locator('#transcript li[data-key="agent:a1"]');
  await a1.waitFor();
  assert.ok(await a1.evaluate((li) => li.classList.contains("agent")));
  // Sides: the customer on the left, the agent on the right.
  const [cBox, aBox] = [await u1.boundingBox(), await a1.boundingBox()];
  assert.ok(aBox.x > cBox.x, `agent at ${aBox.x}, customer at ${cBox.x}`);

  // A rule tip, critical: coloured, its source shown, announced.
  await relay.publish({ type: "tip", callId: "c1", tipId: "rules-cancelacion-1", text: "Riesgo de baja: pregunta el motivo.",
    source: "rules", rule: "cancelacion", final: true, severity: "critical" });
  const ruleTip = page.locator('#tips li[data-tip="rules-cancelacion-1"]');
  await ruleTip.waitFor();
  assert.ok(await ruleTip.evaluate((li) => li.classList.contains("critical")));
  assert.match(await ruleTip.locator(".tip-source").textContent(), /cancelacion/);
  await page.locator("#announce-alert", { hasText: "Riesgo de baja" }).waitFor({ state: "attached" });
  // An LLM tip streams in: one entry, growing, newest first.
  const words = ["Ofrece", "Ofrece la tarifa", "Ofrece la tarifa ahorro y pregunta"];
  for (const w of words) {
    await relay.publish({ type: "tip", callId: "c1", tipId: "llm-1", text: w, source: "llm", final: false, severity: "info" });
    await page.locator('#tips li[data-tip="llm-1"] .tip-text', { hasText: w }).waitFor();
    assert.ok(await page.locator('#tips li[data-tip="llm-1"]').evaluate((li) => li.classList.contains("streaming")));
  }
  await relay.publish({ type: "tip", callId: "c1", tipId: "llm-1", text: "Ofrece la tarifa ahorro y pregunta qué usa más.",
    source: "llm", final: true, severity: "warn" });
  const llmTip = page.locator('#tips li[data-tip="llm-1"]');
  await llmTip.locator(".tip-text", { hasText: "qué usa más." }).waitFor();
  assert.equal(await page.locator('#tips li[data-tip="llm-1"]').count(), 1);
  assert.ok(!(await llmTip.evaluate((li) => li.classList.contains("streaming"))));
  assert.ok(await llmTip.evaluate((li) => li.classList.contains("warn")));
  // Critical tips first, then the newest.
  assert.deepEqual(await page.locator("#tips li").evaluateAll((ls) => ls.map((l) => l.dataset.tip)),
    ["rules-cancelacion-1", "llm-1"]);
  assert.equal(await llmTip.locator(".tip-source").textContent(), "IA");

  // The checklist ticks itself.
  const items = (done) => [
    { id: "saludo", label: "Saludo y presentación", done: true },
    { id: "aviso-grabacion", label: "Aviso de grabación", done },
    { id: "despedida", label: "Despedida", done: false, overdue: false },
  ];
  await relay.publish({ type: "checklist", callId: "c1", items: items(false) });
  const notice = page.locator('#checklist li[data-item="aviso-grabacion"]');
  await notice.waitFor();
  assert.ok(!(await notice.evaluate((li) => li.classList.contains("done"))));
  await relay.publish({ type: "checklist", callId: "c1", items: items(true) });
  await page.locator('#checklist li.done[data-item="aviso-grabacion"]').waitFor();
  assert.equal(await notice.getAttribute("aria-checked"), "true");

  // Live metrics.
  await relay.publish({ type: "metrics", callId: "c1", agentTalkRatio: 0.72, silenceMs: 3000, agentWpm: 151.4,
    customerWpm: 120, overtalkMs: 0, callMs: 42000 });
  await page.locator("#ratio-text", { hasText: "72%" }).waitFor();
  assert.equal(await page.locator("#m-wpm").textContent(), "151");
  assert.equal(await page.locator("#m-cwpm").textContent(), "120");
  assert.match(await page.locator("#ratio-agent").getAttribute("style"), /width: 72%/);
  assert.ok(await page.locator("#ratio-agent").evaluate((d) => d.classList.contains("high")));
  assert.match(await page.locator("#m-silence").textContent(), /^[34] s$/);
  await sleep(1200);
  assert.match(await page.locator("#m-silence").textContent(), /^[45] s$/, "the silence timer runs");
  // stt lags: the customer started speaking (a speech event) and the words
  // are not in yet. That is not silence, whatever a metrics event says.
  await relay.publish({ type: "speech", callId: "c1", speaker: "customer", utteranceId: "u9", startMs: 20000 });
  await page.locator("#m-silence", { hasText: /^0 s$/ }).waitFor({ timeout: 5000 });
  await relay.publish({ type: "metrics", callId: "c1", agentTalkRatio: 0.72, silenceMs: 5000, callMs: 43000 });
  await sleep(1200);
  assert.equal(await page.locator("#m-silence").textContent(), "0 s", "an open utterance holds the silence at zero");
  // stt gave up on it: the transcript says so; the silence runs from the
  // end of those words (lagMs ago).
  await relay.publish({ type: "transcript", callId: "c1", speaker: "customer", utteranceId: "u9", text: "", final: true,
    startMs: 20000, endMs: 23000, lagMs: 6000, gap: "overload" });
  const u9 = page.locator('#transcript li[data-key="customer:u9"]');
  await u9.locator(".text", { hasText: "sin transcribir" }).waitFor();
  assert.ok(await u9.evaluate((li) => li.classList.contains("gap")));
  await page.locator("#m-silence", { hasText: /^[6-8] s$/ }).waitFor({ timeout: 3000 });
  // The duration counts from call.started.
  assert.match(await page.locator("#m-duration").textContent(), /^0:0\d$/);
  await page.screenshot({ path: path.join(OUT, "agent.png") });
  // Half a 1366x768 screen, beside a softphone: still side by side.
  await page.setViewportSize({ width: 800, height: 768 });
  await page.screenshot({ path: path.join(OUT, "agent-800.png") });
  const side = await page.locator(".side").boundingBox();
  const conv = await page.locator(".conversation").boundingBox();
  assert.ok(side.x > conv.x + conv.width - 1, "the tips stay beside the conversation");
  await page.setViewportSize({ width: 1366, height: 768 });

  // Dismissed tips stay dismissed.
  await page.locator('#tips li[data-tip="rules-cancelacion-1"] .dismiss').click();
  await relay.publish({ type: "tip", callId: "c1", tipId: "rules-cancelacion-1", text: "again", source: "rules",
    final: true, severity: "critical" });
  await relay.publish(tr("c1", "agent", "a2", "marcador", true, 3000));
  await page.locator('#transcript li[data-key="agent:a2"]').waitFor();
  assert.equal(await page.locator('#tips li[data-tip="rules-cancelacion-1"]').count(), 0);

  // Older tips fold to one line (critical first, the newest two of each
  // kind whole); a click opens one.
  for (let i = 1; i <= 4; i++) {
    await relay.publish({ type: "tip", callId: "c1", tipId: "w" + i, text: "Aviso número " + i + " con bastante texto para ocupar más de una línea en el panel",
      source: "rules", rule: "queja", title: "Cliente molesto", final: true, severity: "warn" });
  }
  await page.locator('#tips li[data-tip="w4"]').waitFor();
  const order = await page.locator("#tips li").evaluateAll((ls) => ls.map((l) => [l.dataset.tip, l.classList.contains("compact")]));
  assert.deepEqual(order, [["w4", false], ["w3", false], ["w2", true], ["w1", true], ["llm-1", true]]);
  assert.match(await page.locator('#tips li[data-tip="w4"] .tip-source').textContent(), /^Regla: Cliente molesto$/);
  await page.locator('#tips li[data-tip="w1"]').click();
  assert.ok(!(await page.locator('#tips li[data-tip="w1"]').evaluate((li) => li.classList.contains("compact"))));
  await page.screenshot({ path: path.join(OUT, "agent-tips.png") });

  // The end: the summary shows, then the agent's next call takes over.
  await relay.publish({ type: "call.ended", callId: "c1", reason: "customer-hangup", durationMs: 89000 });
  await relay.publish({ type: "summary", callId: "c1", source: "rules", text: "Llamada de 42 s (colgó el cliente).",
    i18n: { en: { text: "Call of 42 s (the customer hung up)." } } });
  await page.locator("#summary-text", { hasText: "Llamada de 42 s" }).waitFor();
  assert.ok(await page.locator("#summary").isVisible());
  await relay.publish({ type: "call.started", callId: "c2", agent: "PJSIP/200", caller: "600", direction: "inbound" });
  await page.locator("#call-info", { hasText: "600" }).waitFor({ timeout: 5000 });
  assert.equal(await page.locator("#transcript li").count(), 0);
  assert.ok(!(await page.locator("#summary").isVisible()));
  // Someone else's call is not shown.
  await relay.publish({ type: "call.started", callId: "c9", agent: "PJSIP/999", caller: "777", direction: "inbound" });
  await relay.publish(tr("c9", "customer", "x", "no es tuya", true));
  await relay.publish(tr("c2", "customer", "y", "hola", true));
  await page.locator('#transcript li[data-key="customer:y"]').waitFor();
  assert.equal(await page.locator('#transcript li[data-key="customer:x"]').count(), 0);
  await page.close();
});

await check("the transcript auto-scrolls until the agent scrolls back", async () => {
  const page = await newPage("?call=s1");
  await relay.publish({ type: "call.started", callId: "s1", agent: "PJSIP/201", caller: "1" });
  for (let i = 0; i < 40; i++) await relay.publish(tr("s1", i % 2 ? "agent" : "customer", "s" + i, "frase número " + i, true, i * 1000));
  await page.locator('#transcript li[data-key="agent:s39"]').waitFor();
  await page.waitForFunction(() => { const l = document.getElementById("transcript"); return l.scrollTop + l.clientHeight >= l.scrollHeight - 2; });
  await page.evaluate(() => { const l = document.getElementById("transcript"); l.scrollTop = 0; l.dispatchEvent(new Event("scroll")); });
  await relay.publish(tr("s1", "customer", "s40", "otra frase", true, 40000));
  await page.locator('#transcript li[data-key="customer:s40"]').waitFor();
  assert.equal(await page.evaluate(() => document.getElementById("transcript").scrollTop), 0);
  assert.ok(await page.locator("#jump").isVisible());
  await page.locator("#jump").click();
  await page.waitForFunction(() => { const l = document.getElementById("transcript"); return l.scrollTop + l.clientHeight >= l.scrollHeight - 2; });
  await page.close();
});

await check("the supervisor view lists every active call live and opens one", async () => {
  await relay.publish({ type: "call.started", callId: "v1", agent: "PJSIP/301", caller: "Ana <5550301>", direction: "inbound" });
  const page = await newPage("?view=supervisor");
  const row1 = page.locator('#sup-calls tr[data-call="v1"]');
  await row1.waitFor();
  assert.match(await row1.textContent(), /PJSIP\/301.*Ana <5550301>/);
  await sleep(300);  // the live feed is open
  await relay.publish({ type: "call.started", callId: "v2", agent: "PJSIP/302", caller: "Luis <5550302>", direction: "inbound" });
  const row2 = page.locator('#sup-calls tr[data-call="v2"]');
  await row2.waitFor();
  await relay.publish({ type: "metrics", callId: "v2", agentTalkRatio: 0.81, silenceMs: 12000, callMs: 95000 });
  await relay.publish({ type: "tip", callId: "v2", tipId: "t", text: "Cliente muy enfadado", source: "rules", final: true, severity: "critical" });
  await row2.locator("td", { hasText: "81%" }).waitFor();
  await row2.locator("td", { hasText: "Cliente muy enfadado" }).waitFor();
  assert.ok(await row2.evaluate((r) => r.classList.contains("alert")));
  assert.match(await row2.locator("td").nth(4).textContent(), /^1[23] s$/);
  assert.match(await row2.locator("td").nth(2).textContent(), /^0:0\d$/);
  // A page opened mid-call shows what already happened: the last tip and
  // a critical one.
  const late = await newPage("?view=supervisor");
  const lateRow = late.locator('#sup-calls tr[data-call="v2"]');
  await lateRow.locator("td", { hasText: "Cliente muy enfadado" }).waitFor();
  assert.ok(await lateRow.evaluate((r) => r.classList.contains("alert")));
  await lateRow.locator("td", { hasText: "81%" }).waitFor();
  await late.close();
  await page.screenshot({ path: path.join(OUT, "supervisor.png") });
  await relay.publish({ type: "call.ended", callId: "v1", reason: "agent-hangup" });
  await page.locator('#sup-calls tr.ended[data-call="v1"]').waitFor();
  await row2.click();
  await page.waitForURL(/\?call=v2/);
  await page.locator('#tips li[data-tip="t"]').waitFor();
  await page.close();
});

await check("after a relay restart the page resumes with since=: nothing missed, nothing twice", async () => {
  const page = await newPage("?call=r1");
  await relay.publish({ type: "call.started", callId: "r1", agent: "PJSIP/401", caller: "9" });
  for (let i = 1; i <= 5; i++) await relay.publish(tr("r1", "customer", "r" + i, "antes " + i, true, i * 1000));
  await page.locator('#transcript li[data-key="customer:r5"]').waitFor();
  await page.locator('#conn[data-state="live"]').waitFor();
  await relay.kill();
  await page.locator('#conn:not([data-state="live"])').waitFor();
  assert.match(await page.locator("#conn").textContent(), /reconectando|sin conexión/);
  await relay.start();
  // Published while the page is still away, and after it is back.
  for (let i = 6; i <= 8; i++) await relay.publish(tr("r1", "customer", "r" + i, "durante " + i, true, i * 1000));
  await page.locator('#conn[data-state="live"]').waitFor({ timeout: 10000 });
  for (let i = 9; i <= 10; i++) await relay.publish(tr("r1", "customer", "r" + i, "después " + i, true, i * 1000));
  await page.locator('#transcript li[data-key="customer:r10"]').waitFor();
  const keys = await page.locator("#transcript li").evaluateAll((ls) => ls.map((l) => l.dataset.key));
  assert.deepEqual(keys, Array.from({ length: 10 }, (_, i) => "customer:r" + (i + 1)));
  // A supervisor page resumes by relay position in the same way.
  await page.close();
});

await check("an ended call opened later: its own length, not live", async () => {
  const page = await newPage("?call=c1");
  await page.locator("#summary-text", { hasText: "Llamada de 42 s" }).waitFor();
  assert.equal(await page.locator("#m-duration").textContent(), "1:29");
  await page.locator('#conn[data-state="ended"]').waitFor();
  assert.equal(await page.locator("#conn").textContent(), "terminada");
  await sleep(1200);
  assert.equal(await page.locator("#m-duration").textContent(), "1:29");
  await page.close();
});

await check("English on request, Spanish by default: the coaching's words too", async () => {
  await relay.publish({ type: "call.started", callId: "e1", agent: "PJSIP/701", caller: "1" });
  await relay.publish({ type: "tip", callId: "e1", tipId: "rules-precio-1", text: "Objeción de precio: pregunta con qué lo compara.",
    source: "rules", rule: "precio", title: "Objeción de precio", final: true, severity: "warn",
    i18n: { en: { title: "Price objection", text: "Price objection: ask what they compare it with." } } });
  await relay.publish({ type: "checklist", callId: "e1", items: [
    { id: "aviso-grabacion", label: "Aviso de grabación", done: false, i18n: { en: { label: "Recording notice" } } }] });
  const page = await newPage("?call=e1&lang=en");
  await page.getByRole("heading", { name: "Conversation" }).waitFor();
  const tip = page.locator('#tips li[data-tip="rules-precio-1"]');
  await tip.locator(".tip-text", { hasText: "Price objection: ask" }).waitFor();
  assert.equal(await tip.locator(".tip-source").textContent(), "Rule: Price objection");
  await page.locator('#checklist li', { hasText: "Recording notice" }).waitFor();
  await page.locator("#lang").click();
  await page.getByRole("heading", { name: "Conversación" }).waitFor();
  assert.equal(await page.evaluate(() => document.documentElement.lang), "es");
  await tip.locator(".tip-text", { hasText: "pregunta con qué lo compara" }).waitFor();
  assert.equal(await tip.locator(".tip-source").textContent(), "Regla: Objeción de precio");
  await page.locator('#checklist li', { hasText: "Aviso de grabación" }).waitFor();
  await page.close();
});

await check("narrow screens and the browser's own requests", async () => {
  const page = await newPage("?agent=PJSIP/200");
  await page.setViewportSize({ width: 420, height: 800 });
  const bar = await page.locator(".bar").boundingBox();
  assert.ok(bar.height < 60, `the header wraps: ${bar.height}px`);
  const langBox = await page.locator("#lang").boundingBox();
  assert.ok(langBox.x + langBox.width <= 420, `EN is cut off at ${langBox.x + langBox.width}`);
  await page.screenshot({ path: path.join(OUT, "agent-420.png") });
  const icon = await page.request.get(relay.base + "/favicon.ico");
  assert.equal(icon.status(), 200);
  await page.close();
});

await check("with auth on: token from the address or the login form, kept for the session only", async () => {
  const tokens = path.join(tmp, "tokens");
  fs.writeFileSync(tokens, "pub-0123456789abcdef publish\nsup-0123456789abcdef supervisor\n" +
    "agt-0123456789abcdef subscribe agent:PJSIP/501\n");
  const secure = new Relay(await freePort(), path.join(tmp, "state2"), { RELAY_TOKENS_FILE: tokens });
  await secure.start();
  try {
    await secure.publish({ type: "call.started", callId: "k1", agent: "PJSIP/501", caller: "Eva" }, "pub-0123456789abcdef");
    const page = await context.newPage();
    await page.goto(secure.base + "/?view=supervisor&token=sup-0123456789abcdef");
    await page.locator('#sup-calls tr[data-call="k1"]').waitFor();
    assert.ok(!page.url().includes("token"), page.url());
    assert.equal(await page.evaluate(() => sessionStorage.getItem("cc.token")), "sup-0123456789abcdef");
    await page.close();
    const fresh = await browser.newContext();
    const login = await fresh.newPage();
    await login.goto(secure.base + "/?view=supervisor&token=wrong-0123456789abc");
    await login.locator("#login").waitFor();
    // No red "offline" badge over a sign-in form: the relay is up.
    assert.ok(!(await login.locator("#conn").isVisible()));
    await login.locator("#login-token").fill("sup-0123456789abcdef");
    await login.locator("#login-form button").click();
    await login.locator('#sup-calls tr[data-call="k1"]').waitFor();
    await fresh.close();
    // An agent's token: that agent's calls only.
    await secure.publish({ type: "call.started", callId: "k2", agent: "PJSIP/502", caller: "Otro" }, "pub-0123456789abcdef");
    const agentCtx = await browser.newContext();
    const agentPage = await agentCtx.newPage();
    await agentPage.goto(secure.base + "/?agent=PJSIP/501&token=agt-0123456789abcdef");
    await agentPage.locator("#call-info", { hasText: "Eva" }).waitFor({ timeout: 5000 });
    await secure.publish(tr("k1", "customer", "q1", "hola desde k1", true), "pub-0123456789abcdef");
    await agentPage.locator('#transcript li[data-key="customer:q1"]').waitFor();
    const seen = await agentPage.evaluate(async () => (await (await fetch("/calls", {
      headers: { Authorization: "Bearer " + sessionStorage.getItem("cc.token") } })).json()).calls.map((c) => c.callId));
    assert.deepEqual(seen, ["k1"]);
    await agentCtx.close();
  } finally {
    await secure.kill();
  }
});

await check("history: a past call found by a word said in it, opened as it was, exported, deleted; scorecards", async () => {
  const call = (id, agent, lines, missed, durationMs) => [
    { type: "call.started", callId: id, agent, caller: "600" + id.slice(-1), direction: "inbound" },
    ...lines.map(([who, text], i) => tr(id, who, id + "-u" + i, text, true, 1000 + i * 3000)),
    { type: "tip", callId: id, tipId: id + "-t", text: "Pregunte el motivo.", source: "rules", rule: "portabilidad", final: true, severity: "warn" },
    { type: "summary", callId: id, text: "Resumen " + id, source: "rules", reason: "customer-hangup", agent, durationMs,
      metrics: { agentTalkRatio: agent.endsWith("0") ? 0.3 : 0.6, agentTalkRatio2m: 0.5, agentWpm: 150, customerWpm: 140, silenceMs: 4000,
        overtalkMs: 500, longestAgentMonologueMs: 1000, customerQuestions: 0, agentSpeechMs: 1, customerSpeechMs: 1 },
      rulesFired: { portabilidad: 1 }, checklist: [{ id: "identificacion", label: "Identificación", done: !missed }] },
    { type: "call.ended", callId: id, reason: "customer-hangup", durationMs },
  ];
  for (const ev of call("hist-a", "PJSIP/300", [["customer", "Quiero portar mi número a otra compañía."], ["agent", "Le ayudo con eso."]], false, 95000)) await relay.publish(ev);
  for (const ev of call("hist-b", "PJSIP/301", [["customer", "La factura de este mes es muy alta."]], true, 30000)) await relay.publish(ev);

  const page = await newPage("?view=history");
  await page.locator('#hist-rows tr[data-call="hist-a"]').waitFor();
  await page.locator('#nav-history[aria-current="page"]').waitFor();
  // Past calls are not live: no connection badge.
  assert.ok(!(await page.locator("#conn").isVisible()));
  // A word said in the call, typed without its accent.
  await page.locator("#hist-q").fill("compania");
  await page.locator("#hist-form button[type=submit]").click();
  await page.waitForFunction(() => [...document.querySelectorAll("#hist-rows tr")].map((r) => r.dataset.call).join() === "hist-a");
  assert.ok(page.url().includes("q=compania"), page.url());
  const row = page.locator('#hist-rows tr[data-call="hist-a"]');
  assert.match(await row.textContent(), /1:35/);
  assert.match(await row.locator(".snippet").textContent(), /\[compañía\]/);
  // The search characters FTS would read as syntax get the relay's reason.
  await page.locator("#hist-q").fill("compa*");
  await page.locator("#hist-form button[type=submit]").click();
  await page.locator("#hist-error", { hasText: "not searchable" }).waitFor();
  await page.locator("#hist-q").fill("");
  await page.locator("#hist-missed").fill("identificacion");
  await page.locator("#hist-form button[type=submit]").click();
  await page.waitForFunction(() => [...document.querySelectorAll("#hist-rows tr")].map((r) => r.dataset.call).join() === "hist-b");
  await page.locator("#hist-missed").fill("");
  await page.locator("#hist-form button[type=submit]").click();
  await page.locator('#hist-rows tr[data-call="hist-a"]').click();

  // Opened as it was: its transcript, summary and own length, not live.
  await page.waitForURL(/call=hist-a/);
  await page.locator('#transcript li', { hasText: "Quiero portar mi número" }).waitFor();
  await page.locator("#summary-text", { hasText: "Resumen hist-a" }).waitFor();
  await page.locator("#m-duration", { hasText: "1:35" }).waitFor();
  await page.locator('#conn[data-state="ended"]').waitFor();
  await page.screenshot({ path: path.join(OUT, "history-call.png") });
  // Exports, downloaded through the page (the token never in an address).
  for (const [format, want] of [["txt", "Cliente: Quiero portar mi número"], ["vtt", "<v Cliente>Quiero portar"], ["json", '"callId":"hist-a"']]) {
    const [dl] = await Promise.all([page.waitForEvent("download"), page.locator(`#call-tools [data-export="${format}"]`).click()]);
    assert.equal(dl.suggestedFilename(), "call-hist-a." + format);
    const body = fs.readFileSync(await dl.path(), "utf8");
    assert.ok(body.includes(want), format + ": " + body);
  }
  // Delete: asked first, then gone from the history and from search.
  page.once("dialog", (d) => d.accept());
  await page.locator("#call-delete").click();
  await page.waitForURL(/view=history/);
  await page.locator('#hist-rows tr[data-call="hist-b"]').waitFor();
  assert.equal(await page.locator('#hist-rows tr[data-call="hist-a"]').count(), 0);
  const gone = await (await fetch(relay.base + "/history?q=compania")).json();
  assert.deepEqual(gone.calls, []);
  await page.screenshot({ path: path.join(OUT, "history.png") });

  // Scorecards: a chart per figure, a row per agent, a CSV.
  await page.goto(relay.base + "/?view=scorecards");
  await page.locator('#score-rows tr[data-agent="PJSIP/301"]').waitFor();
  assert.equal(await page.locator("#score-charts figure.chart").count(), 5);
  assert.ok(await page.locator('#score-charts rect.bar[data-agent="PJSIP/301"]').count() >= 5);
  const ratio = page.locator("#score-charts figure").nth(2);
  assert.match(await ratio.locator("svg").getAttribute("aria-label"), /PJSIP\/301 60%/);
  assert.match(await page.locator('#score-rows tr[data-agent="PJSIP/301"]').textContent(), /Identificación 0%/);
  const [csv] = await Promise.all([page.waitForEvent("download"), page.locator("#score-csv").click()]);
  assert.equal(csv.suggestedFilename(), "scorecards.csv");
  assert.match(fs.readFileSync(await csv.path(), "utf8"), /^agent,calls,/);
  await page.locator("#score-from").fill("2031-01-02");
  await page.locator("#score-to").fill("2031-01-01");
  await page.locator("#score-form button[type=submit]").click();
  await page.locator("#score-error", { hasText: "from must be before to" }).waitFor();
  await page.screenshot({ path: path.join(OUT, "scorecards.png") });
  await page.close();

  // With tokens: an agent finds their own calls only and cannot open
  // another agent's; only a supervisor deletes.
  const tokens = path.join(tmp, "tokens3");
  fs.writeFileSync(tokens, "pub-0123456789abcdef publish\nsup-0123456789abcdef supervisor\n" +
    "agt-0123456789abcdef subscribe agent:PJSIP/501\n");
  const secure = new Relay(await freePort(), path.join(tmp, "state3"), { RELAY_TOKENS_FILE: tokens });
  await secure.start();
  try {
    for (const [id, agent] of [["m1", "PJSIP/501"], ["m2", "PJSIP/502"]]) {
      for (const ev of call(id, agent, [["customer", "Quiero portar la línea " + id]], false, 10000)) await secure.publish(ev, "pub-0123456789abcdef");
    }
    const ctx = await browser.newContext({ acceptDownloads: true });
    const agentPage = await ctx.newPage();
    await agentPage.goto(secure.base + "/?view=history&q=portar&token=agt-0123456789abcdef");
    await agentPage.locator('#hist-rows tr[data-call="m1"]').waitFor();
    assert.equal(await agentPage.locator('#hist-rows tr[data-call="m2"]').count(), 0);
    await agentPage.goto(secure.base + "/?call=m2");
    await agentPage.locator('#call-tools [data-export="txt"]').click();
    await agentPage.locator("#call-error", { hasText: "Este token no puede hacer eso." }).waitFor();
    await agentPage.goto(secure.base + "/?call=m1");
    agentPage.once("dialog", (d) => d.accept());
    await agentPage.locator("#call-delete").click();
    await agentPage.locator("#call-error", { hasText: "Este token no puede hacer eso." }).waitFor();
    await ctx.close();
  } finally {
    await secure.kill();
  }
});

await check("latency: POST /event to text visible, 200 events", async () => {
  const page = await newPage("?call=lat");
  await relay.publish({ type: "call.started", callId: "lat", agent: "PJSIP/601", caller: "0" });
  await page.locator('#conn[data-state="live"]').waitFor();
  const times = await page.evaluate(async (n) => {
    const list = document.getElementById("transcript");
    const out = [];
    for (let i = 0; i < n; i++) {
      const want = "lat-" + i;
      const seen = new Promise((resolve) => {
        const obs = new MutationObserver(() => {
          if (list.lastElementChild && list.lastElementChild.textContent.includes(want)) {
            obs.disconnect();
            requestAnimationFrame(() => resolve(performance.now()));
          }
        });
        obs.observe(list, { childList: true, subtree: true, characterData: true });
      });
      const t0 = performance.now();
      fetch("/event", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ type: "transcript", callId: "lat", speaker: i % 2 ? "agent" : "customer",
          utteranceId: "l" + i, text: want, final: true, startMs: i * 100, endMs: i * 100 + 90 }) });
      out.push((await seen) - t0);
    }
    return out;
  }, 200);
  times.sort((a, b) => a - b);
  const q = (p) => times[Math.min(times.length - 1, Math.floor(p * times.length))];
  console.log(`latency POST /event -> visible (ms, 200 events): p50 ${q(0.5).toFixed(1)}, p99 ${q(0.99).toFixed(1)}, max ${times[times.length - 1].toFixed(1)}`);
  fs.writeFileSync(path.join(OUT, "latency.txt"), `p50_ms ${q(0.5).toFixed(1)}\np99_ms ${q(0.99).toFixed(1)}\n`);
  assert.equal(times.length, 200);
  await page.close();
});

await browser.close();
await relay.kill();
fs.rmSync(tmp, { recursive: true, force: true });
const failed = results.filter(([, r]) => r !== "ok");
console.log(`browser tests: ${results.length - failed.length} passed, ${failed.length} failed; screenshots in ${OUT}`);
process.exit(failed.length ? 1 : 0);
