// Scenario a: `tabs` tabs of one user (one browser context) each call the example
// service's GET /protected through client.fetch every `interval` ms for `seconds` s, with
// tokend's access tokens living 5 s. Reports every tab's calls and failures, whether a tab
// was logged out, and the refreshes the context sent to tokend.
import assert from 'node:assert/strict';
import { config, launch, servePages, clientPage, openClientPage, makeClient, countRefreshes, result, sleep } from './harness.mjs';

const origin = config.pages[0];
const server = await servePages(origin, () => clientPage(config.tokend));
const browser = await launch();
try {
  const context = await browser.newContext();
  const refreshes = countRefreshes(context, config.tokend);
  const pages = [];
  for (let i = 0; i < config.tabs; i += 1) {
    const page = await openClientPage(context, origin);
    await makeClient(page, config);
    if (i === 0) {
      await page.evaluate(({ user, password }) => window.client.login(user, password), config);
    }
    pages.push(page);
  }
  const afterLogin = refreshes.sent;
  const tabs = await Promise.all(pages.map((page) => page.evaluate(async ({ api, seconds, interval }) => {
    const tab = { calls: 0, ok: 0, failures: [], visibility: document.visibilityState };
    const end = Date.now() + seconds * 1000;
    while (Date.now() < end) {
      const started = Date.now();
      tab.calls += 1;
      try {
        const response = await window.client.fetch(`${api}/protected`);
        if (response.status === 200) tab.ok += 1;
        else tab.failures.push({ at: started, status: response.status, body: await response.text() });
      } catch (err) {
        tab.failures.push({ at: started, error: String(err) });
      }
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, interval - (Date.now() - started))));
    }
    tab.loggedIn = window.client.loggedIn;
    tab.loginRequired = window.loginRequired;
    return tab;
  }, config)));
  await sleep(200); // the last refresh's answer event
  assert.ok(tabs.length === config.tabs);
  result({ tabs, refreshes, refreshesBeforeLoop: afterLogin });
} finally {
  await browser.close();
  server.close();
}
