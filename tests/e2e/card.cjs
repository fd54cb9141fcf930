// Drives a real Home Assistant UI in headless Chromium (Playwright with the system browser):
// logs in through the login form, opens the Edge Inspector dashboard, checks the card's DOM,
// presses "Inspect now" and waits for the counter to change, and saves screenshots in the
// light and dark themes. Prints one JSON line with what it saw; the pytest test judges it.
//
//   NODE_PATH=<dir with playwright-core> node tests/e2e/card.cjs BASE_URL OUT_DIR [USER PASSWORD]
const { chromium } = require("playwright-core");
const fs = require("fs");
const path = require("path");

const [base, out, user = "admin", password = "edge-inspector"] = process.argv.slice(2);
const CARD = "edge-inspector-card";

async function cardState(page) {
  return page.evaluate(() => {
    const card = window.__findCard();
    if (!card || !card.shadowRoot) return null;
    const root = card.shadowRoot;
    const img = root.querySelector(".picture img");
    const counter = (name) => root.querySelector(`[data-counter="${name}"] .value`)?.textContent?.trim();
    const haCard = root.querySelector("ha-card");
    return {
      title: root.querySelector(".title")?.textContent?.trim(),
      status: root.querySelector(".chip")?.textContent?.trim(),
      image: img ? { src: img.getAttribute("src"), complete: img.complete, width: img.naturalWidth, height: img.naturalHeight } : null,
      caption: root.querySelector(".caption")?.textContent?.trim(),
      counters: { inspections: counter("inspections"), failed: counter("failed"), rate: counter("rate"), yield: counter("yield") },
      bars: root.querySelectorAll(".chart svg rect").length,
      barHeights: [...root.querySelectorAll(".chart svg rect")].map((r) => Number(r.getAttribute("height"))),
      report: root.querySelector(".report .summary")?.textContent?.trim(),
      reportTitle: root.querySelector(".report h3")?.textContent?.trim(),
      reportMeta: root.querySelector(".report .meta")?.textContent?.trim(),
      verdict: root.querySelector(".report .verdict")?.dataset?.verdict || null,
      verdictText: root.querySelector(".report .verdict")?.textContent?.trim() || null,
      ackEnabled: !root.querySelector('[data-action="acknowledge"]')?.disabled,
      inspectEnabled: !root.querySelector('[data-action="inspect"]')?.disabled,
      background: haCard ? getComputedStyle(haCard).backgroundColor : null,
      textColor: root.querySelector(".title") ? getComputedStyle(root.querySelector(".title")).color : null,
      error: root.querySelector(".error")?.textContent?.trim() || null,
    };
  });
}

async function waitFor(page, check, what, timeout = 60000) {
  const end = Date.now() + timeout;
  let state = null;
  while (Date.now() < end) {
    state = await cardState(page);
    if (state && check(state)) return state;
    await page.waitForTimeout(250);
  }
  throw new Error(`timed out waiting for ${what}; last card state: ${JSON.stringify(state)}`);
}

(async () => {
  fs.mkdirSync(out, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const result = { console_errors: [] };
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 }, colorScheme: "light" });
    // Finds the card deep in Home Assistant's shadow roots (defined in every page it opens).
    await context.addInitScript((tag) => {
      window.__findCard = () => {
        const find = (root) => {
          const hit = root.querySelector(tag);
          if (hit) return hit;
          for (const el of root.querySelectorAll("*")) {
            if (el.shadowRoot) {
              const inner = find(el.shadowRoot);
              if (inner) return inner;
            }
          }
          return null;
        };
        return find(document);
      };
    }, CARD);
    const page = await context.newPage();
    page.on("console", (m) => {
      if (m.type() === "error") result.console_errors.push(m.text().slice(0, 300));
    });
    page.on("pageerror", (e) => result.console_errors.push(String(e).slice(0, 300)));

    // Log in through Home Assistant's own login form.
    await page.goto(`${base}/edge-inspector/inspection`);
    await page.locator('input[name="username"]').fill(user);
    await page.locator('input[name="password"]').fill(password);
    await page.locator('input[name="password"]').press("Enter");
    await page.waitForURL((url) => !url.pathname.startsWith("/auth/"), { timeout: 60000 });
    if (!page.url().includes("/edge-inspector/")) await page.goto(`${base}/edge-inspector/inspection`);
    result.url = page.url();

    const ready = (s) => s.image && s.image.complete && s.image.width > 0 && s.report && s.bars > 0;
    let loaded;
    try {
      loaded = await waitFor(page, ready, "the card with its picture, chart and report", 30000);
    } catch (err) {
      // The frontend gives a dashboard strategy's module 5 s to register; a cold server on a
      // busy machine can miss that once. A reload, as a user would do, loads it from cache.
      result.reloaded = String(err).slice(0, 200);
      await page.reload();
      loaded = await waitFor(page, ready, "the card with its picture, chart and report");
    }
    result.before = loaded;
    await page.screenshot({ path: path.join(out, "card-light.png"), fullPage: true });

    // Inspect now: the counter of inspections goes up.
    const before = Number(loaded.counters.inspections);
    const clicked = await page.evaluate(() => {
      const button = window.__findCard()?.shadowRoot?.querySelector('[data-action="inspect"]');
      if (!button || button.disabled) return false;
      button.click();
      return true;
    });
    result.clicked = clicked;
    result.after = await waitFor(page, (s) => Number(s.counters.inspections) > before, "the counter to change", 30000);
    await page.screenshot({ path: path.join(out, "card-after-inspect.png"), fullPage: true });

    // Acknowledge the latest incident: its state on the card becomes "acknowledged".
    await page.evaluate(() => {
      window.__findCard().shadowRoot.querySelector('[data-action="acknowledge"]').click();
    });
    result.acknowledged = await waitFor(page, (s) => (s.reportMeta || "").endsWith("acknowledged"), "the acknowledgement", 30000);

    // Dark theme: the default theme follows the browser's colour scheme.
    await page.emulateMedia({ colorScheme: "dark" });
    await page.waitForTimeout(1500);
    result.dark = await cardState(page);
    await page.screenshot({ path: path.join(out, "card-dark.png"), fullPage: true });

    // The visual editor: lists the stations, and a choice becomes the card's configuration.
    result.editor = await page.evaluate(async () => {
      const ha = document.querySelector("home-assistant");
      const editor = document.createElement("edge-inspector-card-editor");
      const changes = [];
      editor.addEventListener("config-changed", (e) => changes.push(e.detail.config));
      editor.setConfig({ type: "custom:edge-inspector-card", station_id: "" });
      editor.hass = ha.hass;
      document.body.appendChild(editor);
      await new Promise((r) => setTimeout(r, 1500));
      const form = editor.querySelector("ha-form");
      const schema = form ? form.schema : [];
      const options = schema.length ? schema[0].selector.select.options : [];
      if (form && options.length) {
        form.dispatchEvent(new CustomEvent("value-changed", { detail: { value: { ...form.data, station_id: options[0].value } } }));
      }
      const stub = await customElements.get("edge-inspector-card").getStubConfig(ha.hass);
      editor.remove();
      return { fields: schema.map((f) => f.name), options, changed: changes[changes.length - 1] || null, stub };
    });

    // The fallback dashboard made of built-in cards renders too.
    await page.emulateMedia({ colorScheme: "light" });
    await page.goto(`${base}/edge-inspector-builtin/inspection`);
    await page.waitForTimeout(4000);
    result.builtin_cards = await page.evaluate(() => {
      const names = new Set();
      const walk = (root) => {
        for (const el of root.querySelectorAll("*")) {
          if (/^hui-.*-card$/.test(el.localName)) names.add(el.localName);
          if (el.shadowRoot) walk(el.shadowRoot);
        }
      };
      walk(document);
      return [...names].sort();
    });
    await page.screenshot({ path: path.join(out, "builtin-light.png"), fullPage: true });
    result.ok = true;
  } catch (err) {
    result.ok = false;
    result.error = String(err && err.stack ? err.stack : err);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(result));
})();
