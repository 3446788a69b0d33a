// Drives the nurse station in headless Chromium: signs in through the form (a wrong password first, which must be
// refused and show no patient data), waits for the ward to render, checks beds, vitals, NEWS2,
// infusion remaining volume/ETA and an alarm, acknowledges the alarm by clicking, verifies the page shows the
// acknowledgement, and saves a screenshot.
// Usage: STATION_USER=... STATION_PASSWORD=... node station.mjs <station-url> <screenshot.png>
import { chromium } from "playwright-core";

const [url, shot] = process.argv.slice(2);
const { STATION_USER: user, STATION_PASSWORD: password } = process.env;
if (!url || !shot || !user || !password) {
  console.error("usage: STATION_USER=... STATION_PASSWORD=... node station.mjs <url> <screenshot.png>"); process.exit(2);
}
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
  // Signed out: the sign-in form, no beds.
  await page.waitForSelector("#signin:not([hidden])", { timeout: 10000 });
  if (await page.locator("section.bed").count() !== 0) fail("beds shown before sign-in");
  await page.fill("#signin-user", user);
  await page.fill("#signin-password", password + "-wrong");
  await page.click("#signin button[type=submit]");
  await page.waitForFunction(() => /wrong user id or password/.test(document.querySelector("#signin-error").textContent), null, { timeout: 10000 });
  if (await page.locator("section.bed").count() !== 0) fail("beds shown after a wrong password");
  console.log("wrong password refused");
  await page.fill("#signin-password", password);
  await page.click("#signin button[type=submit]");
  await page.waitForSelector("#who:not([hidden])", { timeout: 10000 });
  const who = await page.locator("#who-name").innerText();
  if (!who.includes(user)) fail("header does not show who is signed in: " + who);
  console.log(`signed in: ${who}`);
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
  const by = await page.locator(`[data-alarm="${alarmId}"]`).innerText().catch(() => "");
  if (by && !by.includes(`ack ${user}`)) fail("acknowledgement does not name the signed-in user: " + by);
  // A SpO2-scale decision through the page: asks for a reason, recorded for the signed-in user.
  const scaleBtn = page.locator('button[data-scale][data-to="2"]').first();
  await scaleBtn.waitFor({ timeout: 10000 });
  const mrn = await scaleBtn.getAttribute("data-scale");
  page.once("dialog", (d) => d.accept("COPD, target 88-92 % (browser test)"));
  const [resp] = await Promise.all([
    page.waitForResponse((r) => r.url().includes("/spo2-scale"), { timeout: 10000 }),
    scaleBtn.click(),
  ]);
  if (resp.status() !== 200) fail(`SpO2 scale for ${mrn} answered ${resp.status()}`);
  console.log(`SpO2 scale 2 set for ${mrn}`);
  // Sign out: back to the form, the ward gone.
  await page.click("#signout");
  await page.waitForSelector("#signin:not([hidden])", { timeout: 10000 });
  if (await page.locator("section.bed").count() !== 0) fail("beds still shown after sign-out");
  const r = await page.evaluate(async () => (await fetch("/api/ward")).status);
  if (r !== 401) fail(`GET /api/ward after sign-out answered ${r}`);
  console.log("signed out");
} catch (e) {
  fail(e.message);
} finally {
  await browser.close();
}
