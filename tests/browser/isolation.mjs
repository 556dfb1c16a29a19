// Scenario d (cookie mode): the refresh token is never readable by the page, and pages of
// origins tokend does not allow (localhost: another site; 127.0.0.1 on another port: the
// same site, so the SameSite=Strict cookie goes along) cannot make tokend refresh or log out.
import assert from 'node:assert/strict';
import { config, launch, servePages, clientPage, openClientPage, makeClient, countRefreshes, result, sleep } from './harness.mjs';

const COOKIE = '__Host-tokend-refresh';
const origin = config.pages[0];
const servers = [await servePages(origin, () => clientPage(config.tokend))];
// The foreign page: plain HTML with a form that POSTs to tokend's /auth/logout.
const foreignPage = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>elsewhere</title></head>
<body><form id="f" method="post" action="${config.tokend}/auth/logout"><button>go</button></form></body></html>`;
for (const other of config.foreign) servers.push(await servePages(other, () => foreignPage));

const browser = await launch();
try {
  const context = await browser.newContext();
  const refreshes = countRefreshes(context, config.tokend);
  // Every request to tokend, with its answer or failure; the bodies of /auth/ answers.
  const toTokend = [];
  const bodies = [];
  const record = async (request, outcome) => {
    if (!request.url().startsWith(config.tokend)) return;
    const headers = await request.allHeaders();
    toTokend.push({
      url: request.url().slice(config.tokend.length), method: request.method(), ...outcome,
      from: headers.origin || null, cookie: (headers.cookie || '').includes(COOKIE),
    });
  };
  context.on('response', async (response) => {
    await record(response.request(), { status: response.status() });
    if (response.url().startsWith(`${config.tokend}/auth/`)) {
      const text = await response.text().catch(() => '');
      bodies.push({ url: response.url(), headers: response.headers(), text });
    }
  });
  context.on('requestfailed', (request) => record(request, { failure: request.failure().errorText }));
  const page = await openClientPage(context, origin);
  await makeClient(page, config);
  await page.evaluate(({ user, password }) => window.client.login(user, password), config);
  const cookieOf = async () => (await context.cookies(config.tokend)).find((c) => c.name === COOKIE);
  const issued = await cookieOf();
  assert.ok(issued, 'no refresh cookie after login');
  // What the page can read: document.cookie, both storages (every value)
  const readable = async (p) => p.evaluate(() => {
    const values = [document.cookie];
    for (const store of [localStorage, sessionStorage]) {
      for (let i = 0; i < store.length; i += 1) values.push(store.key(i), store.getItem(store.key(i)));
    }
    return values;
  });
  const seenByPage = await readable(page);

  // The foreign pages: credentialed fetches (simple, and with the CSRF header: preflighted),
  // then the form POST to /auth/logout (a top-level navigation).
  const attempts = [];
  for (const other of config.foreign) {
    const foreign = await context.newPage();
    await foreign.goto(`${other}/`);
    const fetched = await foreign.evaluate(async (tokend) => {
      const out = [];
      for (const path of ['/auth/refresh', '/auth/logout']) {
        for (const headers of [{}, { 'X-Tokend-CSRF': '1' }]) {
          try {
            const response = await fetch(`${tokend}${path}`, { method: 'POST', credentials: 'include', headers });
            out.push({ path, csrf: 'X-Tokend-CSRF' in headers, readable: true, status: response.status });
          } catch (err) {
            out.push({ path, csrf: 'X-Tokend-CSRF' in headers, readable: false, error: String(err) });
          }
        }
      }
      return out;
    }, config.tokend);
    const [navigation] = await Promise.all([
      foreign.waitForNavigation({ timeout: 10000 }),
      foreign.click('#f button'),
    ]);
    attempts.push({ origin: other, fetched, form: navigation ? navigation.status() : null, seenByPage: await readable(foreign) });
    await foreign.close();
  }
  const afterForeign = await cookieOf();
  const refreshesBefore = refreshes.statuses[200] || 0;

  // The original tab still refreshes (the session was neither rotated nor ended)
  await sleep(config.ttl * 1000 + 500);
  const call = await page.evaluate(async (api) => (await window.client.fetch(`${api}/protected`)).status, config.api);
  const rotated = await cookieOf();
  const seenAfterRefresh = await readable(page);
  result({
    cookie: { httpOnly: issued.httpOnly, secure: issued.secure, sameSite: issued.sameSite, path: issued.path },
    refreshToken: issued.value, rotatedToken: rotated && rotated.value,
    unchangedByForeign: afterForeign && afterForeign.value === issued.value,
    seenByPage: [...seenByPage, ...seenAfterRefresh], attempts, refreshesBefore, refreshes, call,
    loggedIn: await page.evaluate(() => window.client.loggedIn), bodies, toTokend,
  });
} finally {
  await browser.close();
  for (const server of servers) server.close();
}
