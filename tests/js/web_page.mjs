// Opens dsfuse's chat page in headless Chromium (playwright-core driving /usr/bin/chromium), types a
// message, and watches the answer stream in. Usage: node web_page.mjs URL CHROMIUM_PATH
import { chromium } from 'playwright-core';

const [url, executablePath] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath, headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'] });
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.fill('#msg', 'ROMEO:');
  // Count the answer's distinct texts inside the page too (a MutationObserver sees every update, however fast
  // the model streams; sampling from here alone can miss them on a fast machine).
  await page.evaluate(() => {
    window.__partials = new Set();
    new MutationObserver(() => {
      const e = document.querySelector('#answer-1');
      if (e && e.textContent) window.__partials.add(e.textContent);
    }).observe(document.body, { subtree: true, childList: true, characterData: true });
  });
  await page.click('#send');
  // Sample the answer while it streams: it must grow through several distinct partial texts.
  const seen = new Set();
  const t0 = Date.now();
  let done = false;
  while (!done && Date.now() - t0 < 60000) {
    const text = await page.$eval('#answer-1', e => e.textContent).catch(() => '');
    if (text) seen.add(text);
    done = await page.$eval('#answer-1', e => e.dataset.done === '1').catch(() => false);
    await page.waitForTimeout(5);
  }
  const final = await page.$eval('#answer-1', e => e.textContent);
  const user = await page.$eval('.user', e => e.textContent);
  const observed = await page.evaluate(() => window.__partials.size);
  console.log(JSON.stringify({ done, user, final, partials: Math.max(seen.size, observed) }));
  if (!done || !final || user !== 'You: ROMEO:') process.exit(1);
} finally {
  await browser.close();
}
