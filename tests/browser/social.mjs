// Scenario e: social login in the browser against the real oidc-provider: tokend's /login,
// the provider's button, the provider's development login and consent forms, back to
// tokend's /login (login_code exchange) and on to /account, logged in.
import { config, launch, result } from './harness.mjs';

const browser = await launch();
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (err) => console.log(`pageerror: ${err.message}`));
  const visited = [];
  page.on('framenavigated', (frame) => { if (frame === page.mainFrame()) visited.push(new URL(frame.url()).origin + new URL(frame.url()).pathname); });
  await page.goto(`${config.tokend}/login?return_to=/account`);
  const button = page.locator(`button[data-provider="${config.provider}"]`);
  const label = await button.innerText();
  await Promise.all([
    page.waitForURL((url) => url.origin === config.issuer, { timeout: 15000 }),
    button.click(),
  ]);
  // oidc-provider's devInteractions: the login form, then the consent form
  await page.fill('input[name=login]', config.login);
  await page.fill('input[name=password]', 'anything');
  await Promise.all([page.waitForNavigation({ timeout: 15000 }), page.click('button[type=submit]')]);
  const consent = await page.locator('button[type=submit]').innerText();
  await Promise.all([
    page.waitForURL((url) => url.origin === config.tokend && url.pathname === '/account', { timeout: 20000 }),
    page.click('button[type=submit]'),
  ]);
  await page.waitForSelector('#sessions li[data-current="true"]', { timeout: 15000 });
  await page.waitForSelector(`#identities li[data-provider="${config.provider}"]`, { timeout: 15000 });
  result({
    label, consent, url: page.url(), visited,
    sessions: await page.locator('#sessions li[data-session-id]').count(),
    current: await page.locator('#sessions li[data-current="true"]').count(),
    identities: await page.locator('#identities li[data-provider]').evaluateAll((items) => items.map((li) => li.dataset.provider)),
    cookies: (await context.cookies(config.tokend)).map((c) => c.name),
  });
} finally {
  await browser.close();
}
