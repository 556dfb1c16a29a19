// Scenario c: two devices (two browser contexts) of one user on tokend's /account; one
// signs out all other devices; the other's next call to tokend is refused (401) and its
// page shows the login form. Reports the time from the click to the form.
import assert from 'node:assert/strict';
import { config, launch, result, sleep } from './harness.mjs';

// Log in on tokend's own /login and land on /account with the session list shown.
export async function loginToAccount(context, { tokend, user, password, lang }) {
  const page = await context.newPage();
  page.on('pageerror', (err) => console.log(`pageerror: ${err.message}`));
  // ?lang= on /login goes on to /account with the login (the axe scenario checks its lang)
  const query = new URLSearchParams(lang ? { return_to: '/account', lang } : { return_to: '/account' });
  await page.goto(`${tokend}/login?${query}`);
  await page.fill('form#login-form input[name=username]', user);
  await page.fill('form#login-form input[name=password]', password);
  await Promise.all([
    page.waitForURL((url) => url.pathname === '/account', { timeout: 15000 }),
    page.click('form#login-form button[type=submit]'),
  ]);
  await page.waitForSelector('#sessions li[data-current="true"]', { timeout: 15000 });
  return page;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const browser = await launch();
  try {
    const laptop = await browser.newContext();
    const phone = await browser.newContext();
    const a = await loginToAccount(laptop, config);
    const b = await loginToAccount(phone, config);
    // both see both sessions once the page reloads its list (every second)
    await a.waitForFunction(() => document.querySelectorAll('#sessions li[data-session-id]').length === 2, null, { timeout: 5000 });
    const sessionsBefore = await a.locator('#sessions li[data-session-id]').count();
    const buttonText = await a.locator('button#sign-out-others').innerText();

    // the phone's calls to tokend from the click on
    let clicked = null;
    const calls = [];
    phone.on('response', (response) => {
      if (clicked !== null && response.url().startsWith(config.tokend)) {
        calls.push({ at: Date.now() - clicked, url: response.url().slice(config.tokend.length), status: response.status() });
      }
    });
    clicked = Date.now();
    await a.click('button#sign-out-others');
    await b.waitForSelector('form#login-form', { state: 'visible', timeout: 10000 });
    const propagationMs = Date.now() - clicked;
    await sleep(1500); // the laptop's list reloads
    const laptopSessions = await a.locator('#sessions li[data-session-id]').count();
    const laptopCurrent = await a.locator('#sessions li[data-current="true"]').count();
    assert.ok(a.url().endsWith('/account'));
    result({ sessionsBefore, buttonText, propagationMs, calls, phoneUrl: b.url(), laptopSessions, laptopCurrent });
  } finally {
    await browser.close();
  }
}
