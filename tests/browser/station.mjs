// Drives the nurse station in headless Chromium: waits for the ward to render, checks beds, vitals, NEWS2,
// infusion remaining volume/ETA and an alarm, acknowledges the alarm by clicking, verifies the page shows the
// acknowledgement, and saves a screenshot.
// Usage: node station.mjs <station-url> <screenshot.png>
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
if (!url || !shot) { console.error("usage: node station.mjs <url> <screenshot.png>"); process.exit(2); }
const fail = (msg) => { console.error("FAIL: " + msg); process.exitCode = 1; };

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-quic"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  page.on("pageerror", (e) => fail("page error: " + e.message));
  await page.goto(url);
  await page.waitForSelector("section.bed", { timeout: 20000 });
  const beds = await page.locator("section.bed").count();
  console.log(`beds rendered: ${beds}`);
  if (beds < 1) fail("no beds");
  await page.waitForSelector("[data-news2]", { timeout: 20000 });
  await page.waitForSelector(".inf", { timeout: 30000 });
  const inf = await page.locator(".inf").first().innerText();
  if (!/mL left/.test(inf) || !/empty in/.test(inf)) fail("infusion line lacks remaining volume or ETA: " + inf);
  const link = await page.locator("#link").innerText();
  if (!/cloud connected/.test(link)) fail("link state: " + link);
  // An alarm with an Acknowledge button.
  const ack = page.locator("button[data-ack]").first();
  await ack.waitFor({ timeout: 20000 });
  const alarmId = await ack.getAttribute("data-ack");
  await page.screenshot({ path: shot, fullPage: false });
  await ack.click();
  await page.waitForFunction((id) => {
    const el = document.querySelector(`[data-alarm="${id}"]`);
    return !el || el.classList.contains("acknowledged");
  }, alarmId, { timeout: 10000 });
  console.log(`acknowledged ${alarmId} by clicking`);
} catch (e) {
  fail(e.message);
} finally {
  await browser.close();
}
