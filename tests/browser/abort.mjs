// Scenario b: the first refresh is aborted in flight (Playwright aborts the request); the
// client retries it, the call succeeds, the user stays logged in.
import assert from 'node:assert/strict';
import { config, launch, servePages, clientPage, openClientPage, makeClient, countRefreshes, result, sleep } from './harness.mjs';

const origin = config.pages[0];
const server = await servePages(origin, () => clientPage(config.tokend));
const browser = await launch();
try {
  const context = await browser.newContext();
  const refreshes = countRefreshes(context, config.tokend);
  const page = await openClientPage(context, origin);
  await makeClient(page, config);
  await page.evaluate(({ user, password }) => window.client.login(user, password), config);
  const first = await page.evaluate(async (api) => (await window.client.fetch(`${api}/protected`)).status, config.api);
  assert.equal(first, 200);
  let aborted = 0;
  await page.route('**/auth/refresh', (route) => {
    if (aborted === 0) {
      aborted += 1;
      return route.abort('connectionreset');
    }
    return route.continue();
  });
  await sleep(config.ttl * 1000 + 500); // the access token has expired
  const after = await page.evaluate(async (api) => {
    const response = await window.client.fetch(`${api}/protected`);
    return { status: response.status, body: await response.json(), loggedIn: window.client.loggedIn, loginRequired: window.loginRequired };
  }, config.api);
  const again = await page.evaluate(async (api) => (await window.client.fetch(`${api}/protected`)).status, config.api);
  result({ aborted, refreshes, after, again });
} finally {
  await browser.close();
  server.close();
}
