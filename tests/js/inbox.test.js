// The inbox page in a real browser: Debian's chromium driven by
// playwright-core. Screenshots (desk and phone width) go to
// target/screenshots/.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { Core, Bridge, token, toStruct, sleep } from "./harness.js";

const shots = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "target", "screenshots");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";

let core;
let bridge;
let browser;
before(async () => {
  mkdirSync(shots, { recursive: true });
  core = await Core.start();
  bridge = await Bridge.start(core);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => {
  await browser?.close();
  await bridge?.stop();
  await core?.stop();
});

async function eventually(check, what, timeout = 10_000) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    await sleep(50);
  }
  assert.fail(`timed out waiting for ${what} (last: ${last})`);
}

const stateOf = (page) => page.locator("#state").getAttribute("data-state");
const badgeOf = (page) => page.locator("#badge").textContent();

test("the inbox shows, pages, marks and survives a core restart", async () => {
  const vendor = 31;
  for (let i = 1; i <= 25; i++) {
    await core.create({
      vendorId: vendor,
      type: i % 2 ? "order:shipped" : "product:upload",
      content: toStruct({ message: `Order #${1000 + i} has shipped`, data: { orderId: 1000 + i, items: [{ sku: "MAC-13", qty: 1 }] } }),
    });
  }
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(error.message));
  await page.goto(`${bridge.url}/#token=${token({ vendor })}`);

  await eventually(async () => (await stateOf(page)) === "live", "live state");
  await eventually(async () => (await page.locator("#list > li").count()) === 20, "20 items");
  assert.equal(await badgeOf(page), "25");
  assert.equal(await page.locator("#list > li .message").first().textContent(), "Order #1025 has shipped");
  assert.ok(!page.url().includes("token="), "the token leaves the address bar");
  const when = page.locator("#list > li .when").first();
  assert.equal(await when.textContent(), "just now");
  assert.match(await when.getAttribute("title"), /Z\)$/);

  // A live notification arrives at the top, highlighted and announced.
  await core.create({ vendorId: vendor, type: "payment:received", content: toStruct({ message: "Payment received for order #1026", amount: 63 }) });
  await eventually(async () => (await page.locator("#list > li .message").first().textContent()) === "Payment received for order #1026", "live item on top");
  assert.ok(await page.locator("#list > li").first().evaluate((li) => li.classList.contains("fresh")));
  assert.match(await page.locator("#announcer").textContent(), /Payment received/);
  await eventually(async () => (await badgeOf(page)) === "26", "badge 26");

  // The rest of the content folds open on demand.
  const details = page.locator("#list > li .more").first();
  assert.equal(await details.locator("pre").isVisible(), false);
  await details.locator("summary").click();
  assert.match(await details.locator("pre").textContent(), /"amount": 63/);

  await page.screenshot({ path: join(shots, "inbox-desk.png"), fullPage: true });

  // Paging through the offline list.
  await page.locator("#next").click();
  await eventually(async () => (await page.locator("#page-label").textContent()) === "Page 2 of 2", "page 2");
  assert.equal(await page.locator("#list > li").count(), 6);
  assert.equal(await page.locator("#list > li .message").last().textContent(), "Order #1001 has shipped");
  await page.locator("#prev").click();
  await eventually(async () => (await page.locator("#page-label").textContent()) === "Page 1 of 2", "page 1");

  // Mark one read: the badge follows.
  await page.locator("#list > li .mark").first().click();
  await eventually(async () => (await badgeOf(page)) === "25", "badge 25");
  assert.ok(await page.locator("#list > li").first().evaluate((li) => li.classList.contains("read")));

  // appError is shown and can be dismissed.
  await page.evaluate(() => view.socket.emit("markAsRead", { ids: ["nope"] }, () => {}));
  const error = page.locator("#errors .error");
  await eventually(async () => (await error.count()) === 1, "an error message");
  assert.match(await error.textContent(), /ids\[0\].*400/);
  await error.locator("button").click();
  assert.equal(await error.count(), 0);

  // Keyboard: Tab reaches the controls, Enter works them.
  await page.keyboard.press("Tab");
  assert.ok(["BUTTON", "SUMMARY"].includes(await page.evaluate(() => document.activeElement?.tagName)));
  await page.locator("#list > li .mark").nth(1).focus();
  await page.keyboard.press("Enter");
  await eventually(async () => (await badgeOf(page)) === "24", "badge 24 after Enter");

  // The core dies: the page says it is reconnecting; it comes back live.
  await core.kill();
  await eventually(async () => (await stateOf(page)) === "reconnecting", "reconnecting state");
  assert.match(await page.locator("#state").textContent(), /Reconnecting/);
  await core.restart();
  await core.create({ vendorId: vendor, content: toStruct({ message: "Back after the restart" }) });
  await eventually(async () => (await stateOf(page)) === "live", "live again", 20_000);
  await eventually(async () => (await page.locator("#list > li .message").first().textContent()) === "Back after the restart", "notification after restart");

  // Mark all read empties the inbox.
  await page.locator("#mark-all").click();
  await eventually(async () => (await page.locator("#empty").isVisible()), "empty inbox");
  assert.equal(await page.locator("#badge").isVisible(), false);

  // Phone width.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  for (let i = 1; i <= 4; i++) {
    await core.create({ vendorId: vendor, content: toStruct({ message: `Phone check ${i}: a longer line that has to wrap on a narrow screen`, n: i }) });
  }
  await small.goto(`${bridge.url}/#token=${token({ vendor })}`);
  await eventually(async () => (await small.locator("#list > li").count()) === 4, "4 items on the phone");
  const overflow = await small.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  assert.ok(overflow <= 0, `no sideways scrolling on a phone (overflow ${overflow}px)`);
  await small.screenshot({ path: join(shots, "inbox-phone.png"), fullPage: true });
  await phone.close();

  assert.deepEqual(problems, []);
  await context.close();
});

test("two tabs of one user agree without a reload: a read in one shows in the other", async () => {
  const vendor = 33;
  for (let i = 1; i <= 3; i++) {
    await core.create({ vendorId: vendor, content: toStruct({ message: `Return request #${i}` }) });
  }
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  try {
    const [first, second] = [await context.newPage(), await context.newPage()];
    for (const page of [first, second]) {
      await page.goto(`${bridge.url}/#token=${token({ vendor })}`);
      await eventually(async () => (await page.locator("#list > li").count()) === 3, "3 items in each tab");
    }
    const item = (page) => page.locator("#list > li").first();
    await item(first).locator(".mark").click();
    await eventually(async () => item(second).evaluate((li) => li.classList.contains("read")), "read in the other tab");
    assert.equal(await item(second).locator(".status").textContent(), "read");
    assert.equal(await item(second).locator(".mark").count(), 0, "no mark button on a read item");
    await eventually(async () => (await badgeOf(second)) === "2", "the other tab's badge follows");
    // A read by a backend shows in both.
    const id = await item(first).getAttribute("data-id");
    const other = await first.locator("#list > li").nth(1).getAttribute("data-id");
    await core.call("MarkNotifications", { vendorId: vendor, ids: [other], status: "READ" });
    for (const page of [first, second]) {
      await eventually(async () => page.locator(`#list > li[data-id="${other}"]`).evaluate((li) => li.classList.contains("read")), "the backend's read");
      await eventually(async () => (await badgeOf(page)) === "1", "badge 1");
    }
    assert.notEqual(id, other);
    await second.screenshot({ path: join(shots, "inbox-second-tab.png"), fullPage: true });
  } finally {
    await context.close();
  }
});

test("category tabs with their counts, archive and archive all read, in two tabs", async () => {
  const made = [
    ["order:placed", "Order #2001 was placed"],
    ["order:packed", "Order #2001 was packed"],
    ["product:approved", "Your product MAC-13 was approved"],
    ["payment:received", "Payment of 63.00 received"],
    ["order:shipped", "Order #2001 has shipped"],
  ];
  const tabCount = (page, category) => page.locator(`#tabs .tab[data-category="${category}"] .count`).textContent();
  for (const [vendor, width, height, name] of [[34, 1280, 900, "desk"], [35, 390, 844, "phone"]]) {
    for (const [type, message] of made) {
      await core.create({ vendorId: vendor, type, content: toStruct({ message }) });
    }
    const context = await browser.newContext({ viewport: { width, height } });
    try {
      const [first, second] = [await context.newPage(), await context.newPage()];
      for (const page of [first, second]) {
        await page.goto(`${bridge.url}/#token=${token({ vendor })}`);
        await eventually(async () => (await page.locator("#list > li").count()) === 5, "5 items");
        await eventually(async () => (await tabCount(page, "order")) === "3", "the order tab's count");
      }
      assert.equal(await tabCount(first, "payment"), "1");
      assert.equal(await tabCount(first, ""), "5", "All counts every category");

      // A category tab lists only its own.
      await first.locator('#tabs .tab[data-category="order"]').click();
      await eventually(async () => (await first.locator("#list > li").count()) === 3, "the order tab's 3 items");
      assert.deepEqual(
        await first.locator("#list > li .message").allTextContents(),
        ["Order #2001 has shipped", "Order #2001 was packed", "Order #2001 was placed"],
      );
      if (name === "desk") {
        await first.screenshot({ path: join(shots, "inbox-category-desk.png"), fullPage: true });
      }

      // Archive in one tab: it leaves both, and the counts follow.
      const shipped = first.locator("#list > li").first();
      const id = await shipped.getAttribute("data-id");
      await shipped.locator(".archive").click();
      await eventually(async () => (await first.locator(`#list > li[data-id="${id}"]`).count()) === 0, "archived: gone here");
      await eventually(async () => (await second.locator(`#list > li[data-id="${id}"]`).count()) === 0, "and from the other tab");
      for (const page of [first, second]) {
        await eventually(async () => (await tabCount(page, "order")) === "2", "the order count after the archive");
        await eventually(async () => (await badgeOf(page)) === "4", "the badge after the archive");
      }

      // Read one, then archive all read.
      await first.locator("#list > li .mark").first().click();
      await eventually(async () => (await tabCount(second, "order")) === "1", "the read counted in the other tab");
      await first.locator("#archive-read").click();
      await eventually(async () => (await first.locator("#list > li").count()) === 1, "the read one archived");

      // The archive shelf lists both; one goes back to the inbox.
      await first.locator('.view[data-view="ARCHIVED"]').click();
      await eventually(async () => (await first.locator("#list > li").count()) === 2, "2 archived");
      assert.equal(await first.locator("#list > li .archive").first().textContent(), "Move to inbox");
      await first.screenshot({ path: join(shots, `inbox-archive-${name}.png`), fullPage: true });
      await first.locator("#list > li .archive").first().click();
      await eventually(async () => (await first.locator("#list > li").count()) === 1, "one back in the inbox");
      for (const page of [first, second]) {
        await eventually(async () => (await tabCount(page, "order")) === "2", "counted again when brought back");
      }
      await second.screenshot({ path: join(shots, `inbox-tabs-${name}.png`), fullPage: true });

      // Mark all read covers the tab shown (the second is on All).
      await first.locator('.view[data-view="INBOX"]').click();
      await eventually(async () => (await first.locator("#list > li").count()) === 2, "the order inbox again");
      await first.locator("#mark-all").click();
      for (const page of [first, second]) {
        await eventually(async () => (await page.locator('#tabs .tab[data-category="order"]').count()) === (page === first ? 1 : 0),
          "no order tab left where it is not shown");
        await eventually(async () => (await badgeOf(page)) === "2", "product and payment stay unread");
      }
    } finally {
      await context.close();
    }
  }
});

test("action buttons show their completed state in both tabs; a collapsed update replaces its item in place; an expiring item leaves", async () => {
  for (const [vendor, width, height, name] of [[36, 1280, 900, "desk"], [37, 390, 844, "phone"]]) {
    const returned = await core.create({
      vendorId: vendor,
      type: "return:requested",
      content: toStruct({ message: "Return requested for order #3001" }),
      actions: [
        { id: "accept", label: "Accept return" },
        { id: "view", label: "View order", url: "https://shop.example/orders/3001" },
      ],
    });
    const placed = await core.create({
      vendorId: vendor,
      type: "order:placed",
      content: toStruct({ message: "Order #3002 was placed" }),
      collapseKey: "order-3002",
    });
    await core.create({ vendorId: vendor, type: "payment:received", content: toStruct({ message: "Payment of 12.00 received" }) });
    const context = await browser.newContext({ viewport: { width, height } });
    try {
      const [first, second] = [await context.newPage(), await context.newPage()];
      for (const page of [first, second]) {
        await page.goto(`${bridge.url}/#token=${token({ vendor })}`);
        await eventually(async () => (await page.locator("#list > li").count()) === 3, "3 items");
      }
      const item = (page, id) => page.locator(`#list > li[data-id="${id}"]`);
      const choices = item(first, returned.id).locator(".choice");
      assert.deepEqual(await choices.allTextContents(), ["Accept return", "View order"]);
      assert.equal(await choices.nth(1).getAttribute("href"), "https://shop.example/orders/3001");
      assert.equal(await choices.nth(1).getAttribute("rel"), "noopener noreferrer");
      await first.screenshot({ path: join(shots, `inbox-actions-${name}.png`), fullPage: true });

      // Pressing a button in one tab: both show it taken, and read.
      await choices.first().click();
      for (const page of [first, second]) {
        const taken = item(page, returned.id).locator(".taken");
        await eventually(async () => (await taken.isVisible()) && (await taken.textContent()).startsWith("Accept return"),
          "the completed state");
        assert.equal(await item(page, returned.id).locator(".choice").count(), 0, "no button left to press");
        await eventually(async () => (await item(page, returned.id).locator(".status").textContent()) === "read", "read");
        await eventually(async () => (await badgeOf(page)) === "2", "the badge after the action");
      }
      await second.screenshot({ path: join(shots, `inbox-action-taken-${name}.png`), fullPage: true });

      // The order's next status replaces its item where it was.
      const before = await first.locator("#list > li").evaluateAll((items) => items.map((li) => li.dataset.id));
      const position = before.indexOf(placed.id);
      const packed = await core.create({
        vendorId: vendor,
        type: "order:packed",
        content: toStruct({ message: "Order #3002 was packed" }),
        collapseKey: "order-3002",
      });
      for (const page of [first, second]) {
        await eventually(async () => (await item(page, packed.id).count()) === 1, "the update shown");
        await eventually(async () => (await item(page, placed.id).count()) === 0, "the old one gone");
        const now = await page.locator("#list > li").evaluateAll((items) => items.map((li) => li.dataset.id));
        assert.equal(now.length, 3, "the list did not grow");
        assert.equal(now.indexOf(packed.id), position, "in the old one's place");
        assert.equal(await item(page, packed.id).locator(".message").textContent(), "Order #3002 was packed");
        assert.equal(await badgeOf(page), "2", "the count did not grow");
      }
      await first.screenshot({ path: join(shots, `inbox-collapsed-${name}.png`), fullPage: true });

      // A flash sale ending: its item leaves both tabs by itself (at one
      // width: the page does the same at both).
      if (name !== "desk") continue;
      const sale = await core.create({
        vendorId: vendor,
        type: "sale:flash",
        content: toStruct({ message: "Flash sale: 20% off for a moment" }),
        expiresAt: new Date(Date.now() + 4000).toISOString(),
      });
      for (const page of [first, second]) {
        await eventually(async () => (await item(page, sale.id).count()) === 1, "the sale shown");
      }
      for (const page of [first, second]) {
        await eventually(async () => (await item(page, sale.id).count()) === 0, "the sale gone at its expiry");
        await eventually(async () => (await badgeOf(page)) === "2", "the badge after the expiry");
      }
    } finally {
      await context.close();
    }
  }
});

test("the settings panel turns a category off on a channel; what it stops never shows, at desk and phone width", async () => {
  for (const [name, viewport, vendor] of [["desk", { width: 1280, height: 900 }, 41], ["phone", { width: 390, height: 844 }, 42]]) {
    const context = await browser.newContext({ viewport });
    try {
      const page = await context.newPage();
      const problems = [];
      page.on("pageerror", (error) => problems.push(error.message));
      await page.goto(`${bridge.url}/#token=${token({ vendor })}`);
      await eventually(async () => (await stateOf(page)) === "live", "live state");
      await page.locator("#preferences-toggle").click();
      assert.equal(await page.locator("#preferences-toggle").getAttribute("aria-expanded"), "true");
      const box = page.getByRole("checkbox", { name: "marketing by push" });
      await eventually(async () => (await box.count()) === 1, "the marketing row");
      assert.ok(await box.isChecked(), "on until turned off");
      await box.click();
      await eventually(async () => /marketing by push is off/.test(await page.locator("#announcer").textContent()), "saved");
      assert.ok(!(await box.isChecked()));
      const stored = (await core.call("GetPreferences", { vendorId: vendor })).rules;
      assert.deepEqual(stored.map(({ category, channel, enabled }) => ({ category, channel, enabled })),
        [{ category: "marketing", channel: "PUSH", enabled: false }]);

      // A category of one's own, turned off by e-mail.
      await page.locator("#new-category").fill("review");
      await page.locator("#add-category button").click();
      await page.getByRole("checkbox", { name: "review by e-mail" }).click();
      await eventually(async () => /review by e-mail is off/.test(await page.locator("#announcer").textContent()), "saved");

      const sale = await core.create({ vendorId: vendor, type: "marketing:sale", channel: "PUSH", content: toStruct({ message: "Flash sale: 20% off" }) });
      assert.equal(sale.suppressed, true);
      await core.create({ vendorId: vendor, type: "order:shipped", channel: "PUSH", content: toStruct({ message: "Order #77 has shipped" }) });
      await eventually(async () => (await page.locator("#list > li").count()) === 1, "only the order");
      assert.equal(await page.locator("#list > li .message").first().textContent(), "Order #77 has shipped");

      // A second tab opening the panel reads the same settings.
      const second = await context.newPage();
      await second.goto(`${bridge.url}/#token=${token({ vendor })}`);
      await eventually(async () => (await stateOf(second)) === "live", "second tab live");
      await second.locator("#preferences-toggle").click();
      const secondBox = second.getByRole("checkbox", { name: "marketing by push" });
      await eventually(async () => (await secondBox.count()) === 1 && !(await secondBox.isChecked()), "off in the second tab too");
      assert.ok(!(await second.getByRole("checkbox", { name: "review by e-mail" }).isChecked()));
      assert.ok(await second.getByRole("checkbox", { name: "review by push" }).isChecked());
      await page.screenshot({ path: join(shots, `inbox-preferences-${name}.png`), fullPage: true });
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
    }
  }
});

test("sign in by pasting a token; a bad token is refused with the reason", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(`${bridge.url}/`);
  await eventually(async () => page.locator("#sign-in").isVisible(), "sign-in form");
  await page.locator("#token").fill("not-a-token");
  await page.locator("#sign-in-form button").click();
  await eventually(async () => (await stateOf(page)) === "refused", "refused state");
  assert.match(await page.locator("#state").textContent(), /invalid token/);
  assert.equal(await page.locator("#mark-all").isVisible(), false, "no inbox controls while signed out");

  await page.locator("#token").fill(token({ customer: 44 }));
  await page.locator("#sign-in-form button").click();
  await eventually(async () => (await stateOf(page)) === "live", "live after signing in");
  await eventually(async () => page.locator("#empty").isVisible(), "empty inbox");
  assert.equal(await page.locator("#pager").isVisible(), false, "no pager for an empty inbox");
  assert.equal(await page.locator("#loading").isVisible(), false);
  // A notification without a message: its type shows once, as the headline.
  await core.create({ customerId: 44, type: "order:packed", content: toStruct({ orderId: 881 }) });
  await eventually(async () => (await page.locator("#list > li").count()) === 1, "the live item");
  assert.equal(await page.locator("#list > li .message").textContent(), "order:packed");
  assert.equal(await page.locator("#list > li .type").isVisible(), false);
  await context.close();
});

test("a token that expires signs the page out with the reason; a fresh one brings it back live", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const vendor = 45;
  await page.goto(`${bridge.url}/#token=${token({ vendor, ttl: "3s" })}`);
  await eventually(async () => (await stateOf(page)) === "live", "live");
  await eventually(async () => page.locator("#sign-in").isVisible(), "signed out at the token's expiry", 15_000);
  assert.match(await page.locator("#state").textContent(), /session expired/);
  await page.locator("#token").fill(token({ vendor }));
  await page.locator("#sign-in-form button").click();
  await eventually(async () => (await stateOf(page)) === "live", "live with the fresh token");
  await core.create({ vendorId: vendor, content: toStruct({ message: "After a fresh token" }) });
  await eventually(async () => (await page.locator("#list > li .message").first().textContent()) === "After a fresh token", "live notifications again");
  await context.close();
});
