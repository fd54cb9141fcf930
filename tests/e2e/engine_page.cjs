// The engine's own pages in headless Chromium (Playwright with the system browser), on the
// default set-up (loopback, no token): the live view opened directly and shown in another
// site's page still work; what another site's page tries against the API (the no-cors
// text/plain POST that disabled a station, a websocket) is refused. Prints one JSON line.
//
//   NODE_PATH=<dir with playwright-core> node tests/e2e/engine_page.cjs ENGINE_URL STATION OUT_DIR SITE_URL
//
// SITE_URL is the other site: a page on another origin (another port on loopback, so that the
// browser's own private-network protection does not stop the requests before the engine sees
// them) that shows the live view in an <img id="live">.
const { chromium } = require("playwright-core");
const path = require("path");

const [engine, station, out, site] = process.argv.slice(2);

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const result = { ok: false, requests: [] };
  try {
    const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
    const page = await context.newPage();
    page.on("response", (r) => {
      if (r.url().startsWith(engine)) result.requests.push({ url: r.url().slice(engine.length), method: r.request().method(), status: r.status() });
    });
    page.on("requestfailed", (r) => {
      if (r.url().startsWith(engine)) result.requests.push({ url: r.url().slice(engine.length), method: r.method(), failed: r.failure()?.errorText });
    });
    const stream = `${engine}/api/stations/${station}/stream.mjpeg`;

    // 1. the live view opened in the browser: Chromium shows the multipart stream as an image
    await page.goto(stream, { waitUntil: "commit" });
    await page.waitForFunction(() => document.images.length && document.images[0].naturalWidth > 0, null, { timeout: 60000 });
    result.direct = await page.evaluate(() => ({ width: document.images[0].naturalWidth, height: document.images[0].naturalHeight }));
    await page.screenshot({ path: path.join(out, "live-view.png") });

    // 2. another site's page
    await page.goto(site);
    // its <img> of the live view still loads (a dashboard may embed it)
    await page.waitForFunction(() => document.getElementById("live").naturalWidth > 0, null, { timeout: 60000 });
    result.embedded = await page.evaluate(() => document.getElementById("live").naturalWidth);
    // the attack from the issue, and a websocket from the same page
    result.attack = await page.evaluate(async ({ engine, station }) => {
      const posts = [];
      for (const [what, body] of [["enabled", '{"enabled": false}'], ["thresholds", '{"confidence": 0.01}']]) {
        try {
          await fetch(`${engine}/api/stations/${station}/${what}`, {
            method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body,
          });
          posts.push("sent");
        } catch (e) { posts.push(String(e)); }
      }
      const ws = await new Promise((resolve) => {
        const socket = new WebSocket(engine.replace("http", "ws") + "/api/ws?actions=1");
        const timer = setTimeout(() => resolve("no answer"), 20000);
        socket.onopen = () => { clearTimeout(timer); socket.close(); resolve("opened"); };
        socket.onerror = () => { clearTimeout(timer); resolve("refused"); };
      });
      return { posts, ws };
    }, { engine, station });
    await page.screenshot({ path: path.join(out, "other-site.png") });
    result.ok = true;
  } catch (e) {
    result.error = String(e && e.stack || e);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})();
