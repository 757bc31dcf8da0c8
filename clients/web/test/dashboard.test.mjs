// The dashboard in a real browser: Debian's Chromium, headless, driven by playwright-core.
// Starts `steer serve` on the tiny random model, enters the weddings example (layers scaled to
// the 4-layer model), waits for both columns to finish, checks that they differ, and saves a
// screenshot to artifacts/dashboard.png.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import os from "node:os";
import net from "node:net";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");
const bin = process.env.STEER_BIN || path.join(root, "target/debug/steer");
const chromiumPath = process.env.CHROMIUM || "/usr/bin/chromium";

const freePort = () => new Promise((resolve) => {
  const s = net.createServer();
  s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
});

async function waitReady(url, child) {
  const deadline = Date.now() + 120_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error("steer serve exited: " + child.exitCode);
    try { const r = await fetch(url); if (r.ok) return; } catch {}
    if (Date.now() > deadline) throw new Error("steer serve did not come up");
    await new Promise((r) => setTimeout(r, 100));
  }
}

test("weddings example streams into both columns, which differ", { timeout: 240_000 }, async () => {
  const port = await freePort();
  const token = "dashboard-test-token-0123456789";
  const tokens = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "steer-")), "tokens");
  fs.writeFileSync(tokens, token + "\n");
  const vectors = fs.mkdtempSync(path.join(os.tmpdir(), "steer-vectors-"));
  const server = spawn(bin, ["serve", "--model", path.join(root, "fixtures/tiny-gpt2"), "--dtype", "bf16", "--addr", `127.0.0.1:${port}`,
    "--auth-tokens", tokens, "--vector-dir", vectors, "--sae-dir", path.join(root, "fixtures")],
    { stdio: "ignore", env: { ...process.env, STEER_LOG: "warn" } });
  const browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  try {
    const base = `http://127.0.0.1:${port}/dashboard/index.html`;
    await waitReady(base, server);
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
    await page.goto(base);
    await page.fill("#prompt", "I went up to my friend and said");
    await page.fill("#additions", "1 4 I talk about weddings constantly  \n1 -4 I do not talk about weddings constantly");
    await page.fill("#tokens", "25");
    await page.fill("#comparisons", "2");
    await page.check("#show_norms");
    // Count text updates while streaming: tokens must arrive before the rows finish.
    await page.evaluate(() => {
      window.__updates = 0;
      new MutationObserver(() => window.__updates++).observe(document.getElementById("results"), { subtree: true, childList: true, characterData: true });
    });
    // Without the token the server refuses (UNAUTHENTICATED, code 16); the page says so.
    await page.click("#run");
    await page.waitForSelector('#results[data-done="error"]', { timeout: 60_000 });
    assert.match(await page.textContent("#status"), /^16: /);
    await page.fill("#token", token);
    await page.click("#run");
    // The model line (fetched once the token is there) names the weights' dtype.
    await page.waitForFunction(() => /weights bf16$/.test(document.getElementById("model").textContent), null, { timeout: 30_000 });
    await page.waitForSelector('#results[data-done="true"], #results[data-done="error"]', { timeout: 180_000 });
    const status = await page.textContent("#status");
    assert.equal(await page.getAttribute("#results", "data-done"), "true", status);
    const unsteered = await page.$$eval("#unsteered .completion .text", (els) => els.map((e) => e.textContent));
    const steered = await page.$$eval("#steered .completion .text", (els) => els.map((e) => e.textContent));
    assert.equal(unsteered.length, 2);
    assert.equal(steered.length, 2);
    assert.ok(unsteered.every((t) => t.length > 0) && steered.every((t) => t.length > 0));
    assert.notDeepEqual(steered, unsteered, "steering changed nothing");
    assert.ok(await page.evaluate(() => window.__updates) > 4 * 5, "tokens did not stream");
    assert.equal((await page.$$("#norms .norm")).length, 8, "per-position norms of the [8, 64] steering tensor (BOS + 7 tokens)");
    // Export: the run as JSON, downloaded.
    const [download] = await Promise.all([page.waitForEvent("download"), page.click("#export")]);
    const exported = JSON.parse(fs.readFileSync(await download.path(), "utf8"));
    assert.deepEqual(exported.steered, steered);
    assert.equal(exported.sampling.top_p, 0.3);
    // The vector library: save the additions as a vector, apply it alone (no additions), and
    // get the same steered completions; download it as a vector file.
    await page.fill("#vector_name", "weddings");
    await page.click("#save_vector");
    await page.waitForSelector("#library tr[data-digest] .name");
    assert.equal(await page.textContent("#library tr[data-digest] .name"), "weddings");
    await page.click("#library tr[data-digest] .apply");
    await page.fill("#additions", "");
    await page.click("#run");
    await page.waitForSelector('#results[data-done="true"], #results[data-done="error"]', { timeout: 180_000 });
    assert.equal(await page.getAttribute("#results", "data-done"), "true", await page.textContent("#status"));
    const fromLibrary = await page.$$eval("#steered .completion .text", (els) => els.map((e) => e.textContent));
    assert.deepEqual(fromLibrary, steered, "the library vector steers as its additions did");
    const [file] = await Promise.all([page.waitForEvent("download"), page.click("#library tr[data-digest] .download")]);
    const bytes = fs.readFileSync(await file.path());
    const n = Number(bytes.readBigUInt64LE(0));
    const meta = JSON.parse(bytes.subarray(8, 8 + n).toString()).__metadata__;
    assert.equal(JSON.parse(meta.steer).format, "steer.vector/1");
    assert.equal(JSON.parse(meta.steer).name, "weddings");
    fs.mkdirSync(path.join(root, "artifacts"), { recursive: true });
    await page.screenshot({ path: path.join(root, "artifacts/dashboard.png"), fullPage: true });
    await page.click(".applied button"); // remove it again
    // SAE features: browse the fixture SAE by index, steer with feature 5 (stored and applied),
    // then with its direction ablated over the generated tokens only.
    await page.click("#sae_panel summary");
    await page.waitForSelector('#sae_name option[value="tiny-sae"]', { state: "attached" });
    await page.selectOption("#sae_name", "tiny-sae");
    await page.click("#sae_browse");
    await page.waitForSelector('#sae_features tr[data-feature="15"]');
    assert.equal((await page.$$("#sae_features tr")).length, 16);
    assert.ok((await page.textContent('#sae_features tr[data-feature="5"] .tops')).length > 0, "promoted tokens shown");
    await page.fill("#sae_scale", "6");
    await page.click('#sae_features tr[data-feature="5"] button');
    await page.waitForSelector(".applied");
    assert.equal(await page.textContent(".applied b"), "tiny-sae-f5");
    await page.fill("#additions", "");
    const runAgain = async () => {
      await page.click("#run");
      await page.waitForSelector('#results[data-done="true"], #results[data-done="error"]', { timeout: 180_000 });
      assert.equal(await page.getAttribute("#results", "data-done"), "true", await page.textContent("#status"));
      return page.$$eval("#steered .completion .text", (els) => els.map((e) => e.textContent));
    };
    const withFeature = await runAgain();
    assert.notDeepEqual(withFeature, unsteered, "the SAE feature steers");
    await page.selectOption(".applied .op", "2");
    await page.fill(".applied .window", "generated");
    const ablated = await runAgain();
    assert.notDeepEqual(ablated, withFeature, "ablating its direction is another steering");
    await page.click(".applied button");
    // Evaluate: the perplexity ratio at every layer of the model, plotted with named axes.
    await page.click("#evaluate summary");
    await page.fill("#eval_layers", "0-3");
    await page.click("#eval_run");
    await page.waitForSelector('#eval_status[data-state]', { timeout: 120_000 });
    assert.equal(await page.getAttribute("#eval_status", "data-state"), "SWEEP_STATE_DONE", await page.textContent("#eval_status"));
    assert.match(await page.textContent("#eval_status"), /^sweep-1: done, 5\/5 settings, prompting ratio /);
    assert.equal(await page.getAttribute("#eval_plot", "data-points"), "4");
    assert.equal(await page.textContent("#eval_plot .x-label"), "layer");
    assert.equal(await page.textContent("#eval_plot .y-label"), "perplexity ratio (steered / unsteered)");
    await page.screenshot({ path: path.join(root, "artifacts/dashboard-evaluate.png"), fullPage: true });
    // The sweep is the server's: listed, and shown again from there.
    await page.evaluate(() => { document.getElementById("eval_plot").innerHTML = ""; document.getElementById("eval_plot").dataset.points = "0"; });
    await page.selectOption("#eval_history", "sweep-1");
    await page.waitForSelector('#eval_plot[data-points="4"]');
    // A preset fills the form, its layers scaled from GPT-2-XL's 48 to the model's 4.
    await page.selectOption("#preset", "weddings (ARENA)");
    await page.waitForSelector('#preset[data-applied="weddings (ARENA)"]');
    assert.match(await page.inputValue("#additions"), /^1 4 I talk about weddings constantly/);
    assert.equal(await page.inputValue("#rep"), "1.2");
    // Cancel: a long run stops at once and says so.
    await page.fill("#tokens", "240");
    await page.fill("#comparisons", "8");
    await page.click("#run");
    await page.waitForSelector("#cancel:not([disabled])");
    await page.click("#cancel");
    await page.waitForSelector('#results[data-done="cancelled"], #results[data-done="true"]', { timeout: 60_000 });
    assert.equal(await page.getAttribute("#results", "data-done"), "cancelled");
    assert.equal(await page.textContent("#status"), "cancelled");
  } finally {
    await browser.close();
    server.kill("SIGTERM");
  }
});
