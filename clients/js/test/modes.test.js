// Cookie mode, storage mode across tabs, the account calls and the social-login helpers.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { browser, BASE, FakeClock, FakeServer } from './fakes.js';
import { createTokendClient } from '../src/tokend-client.js';

const tokendRequests = (server) => server.requests.filter((r) => r.path.startsWith('/auth/'));

test('cookie mode: no token in storage; tokend calls send credentials and X-Tokend-CSRF', async () => {
  const b = browser({ cookie: true });
  const [a, c] = [b.tab(), b.tab()];
  await b.clock.settle(a.client.login('alice', 'pw'));
  const access = await a.client.accessToken();
  assert.ok(access && b.server.jar);
  await b.clock.advance(301_000);
  assert.equal((await b.clock.settle(a.client.fetch(`${BASE}/api/me`))).status, 200);
  await b.clock.settle(c.client.sessions()); // c has a's refreshed token over the channel
  await b.clock.settle(a.client.logout());
  assert.equal(b.area.writes.filter((w) => w.key.startsWith('tokend-tokens')).length, 0);
  assert.ok(![...b.area.map.values()].some((v) => v.includes(access)));
  const sent = tokendRequests(b.server);
  assert.deepEqual(sent.map((r) => r.path), ['/auth/login', '/auth/refresh', '/auth/sessions', '/auth/logout']);
  for (const r of sent) {
    assert.equal(r.credentials, 'include', r.path);
    assert.equal(r.headers.get('X-Tokend-CSRF'), '1', r.path);
  }
  const refresh = sent.find((r) => r.path === '/auth/refresh');
  assert.equal(refresh.headers.get('Authorization'), null); // the cookie carries it
  assert.equal(b.server.alive(), 0);
  assert.equal(b.server.jar, null);
});

test('cookie mode: app calls get Authorization only, no credentials added', async () => {
  const b = browser({ cookie: true });
  const a = b.tab();
  await b.clock.settle(a.client.login('alice', 'pw'));
  await b.clock.settle(a.client.fetch('https://api.example.com/api/me'));
  const call = b.server.requests.at(-1);
  assert.equal(call.credentials, undefined);
  assert.equal(call.headers.get('X-Tokend-CSRF'), null);
  assert.match(call.headers.get('Authorization'), /^Bearer /);
  await b.clock.settle(a.client.fetch(`${BASE}/api/me`, { credentials: 'include' }));
  assert.equal(b.server.requests.at(-1).credentials, 'include'); // the caller's choice stays
});

test('cookie mode: a new tab gets a token another tab shares, without a refresh', async () => {
  const b = browser({ cookie: true });
  const a = b.tab();
  await b.clock.settle(a.client.login('alice', 'pw'));
  const fresh = b.tab();
  assert.equal(fresh.client.loggedIn, false);
  assert.equal(await b.clock.settle(fresh.client.accessToken()), await a.client.accessToken());
  assert.equal(b.server.counts.refresh, 0);
});

test('cookie mode: a new tab alone refreshes by the cookie; five expired tabs refresh once', async () => {
  const b = browser({ cookie: true });
  await b.clock.settle(b.tab().client.login('alice', 'pw'));
  const tabs = Array.from({ length: 5 }, () => b.tab());
  await b.clock.advance(301_000); // the first tab's token expired: it cannot share it
  const got = await b.clock.settle(Promise.all(tabs.map((t) => t.client.accessToken())));
  assert.equal(b.server.counts.refresh, 1);
  assert.equal(b.server.counts.reuse, 0);
  assert.equal(new Set(got).size, 1);
  assert.ok(got[0]);
});

test('cookie mode: a new tab without a session is told once, other tabs keep theirs', async () => {
  const b = browser({ cookie: true });
  const a = b.tab();
  const fresh = b.tab();
  assert.equal(await b.clock.settle(fresh.client.accessToken()), null);
  assert.equal(fresh.loginRequired, 1);
  assert.equal(a.loginRequired, 0);
});

test('storage mode: tokens in the storage; a login, refresh and logout reach the other tabs', async () => {
  const b = browser();
  const [a, c] = [b.tab(), b.tab()];
  await b.clock.settle(a.client.login('alice', 'pw'));
  await b.clock.flush();
  const stored = JSON.parse(b.area.map.get(`tokend-tokens:${BASE}`));
  assert.equal(stored.access_token, await a.client.accessToken());
  assert.ok(stored.refresh_token);
  assert.ok(c.client.loggedIn);
  assert.deepEqual(c.changes, [{ loggedIn: true, reason: 'login' }]);
  await b.clock.advance(301_000);
  await b.clock.settle(a.client.accessToken());
  await b.clock.flush();
  assert.deepEqual(c.changes.at(-1), { loggedIn: true, reason: 'refresh' });
  await b.clock.settle(a.client.logout());
  await b.clock.flush();
  assert.deepEqual(c.changes.at(-1), { loggedIn: false, reason: 'logout' });
  assert.equal(c.client.loggedIn, false);
  assert.equal(c.loginRequired, 0); // a logout is not a dead session
  assert.equal(b.server.alive(), 0);
});

test('storage events alone (no BroadcastChannel) update the other tabs', async () => {
  const b = browser({ channels: false });
  const [a, c] = [b.tab(), b.tab()];
  await b.clock.settle(a.client.login('alice', 'pw'));
  await b.clock.flush();
  assert.deepEqual(c.changes, [{ loggedIn: true, reason: 'login' }]);
});

test('logoutOthers, logoutAll and sessions call their endpoints with the access token', async () => {
  const b = browser({ pageSize: 2 });
  const a = b.tab();
  for (let i = 0; i < 3; i++) b.server.startSession('alice'); // other devices
  await b.clock.settle(a.client.login('alice', 'pw'));
  const token = await a.client.accessToken();
  const list = await b.clock.settle(a.client.sessions());
  assert.equal(list.length, 4); // two pages, next_cursor followed
  assert.equal(list.filter((s) => s.current).length, 1);
  await b.clock.settle(a.client.logoutOthers());
  assert.equal(b.server.alive(), 1);
  assert.ok(a.client.loggedIn);
  await b.clock.settle(a.client.logoutAll());
  assert.equal(b.server.alive(), 0);
  assert.equal(a.client.loggedIn, false);
  const sent = tokendRequests(b.server).slice(1);
  assert.deepEqual(sent.map((r) => `${r.method} ${r.path}`), [
    'GET /auth/sessions',
    'GET /auth/sessions?cursor=2',
    'POST /auth/logout-others',
    'POST /auth/logout-all',
  ]);
  assert.ok(sent.every((r) => r.headers.get('Authorization') === `Bearer ${token}`));
});

test('login errors arrive as TokendError with the JSON error and Retry-After', async () => {
  const b = browser();
  const a = b.tab();
  await assert.rejects(b.clock.settle(a.client.login('alice', 'nope')), { status: 401, error: 'invalid_grant' });
  b.server.login = () => Response.json({ error: 'slow_down', error_description: 'wait' }, { status: 429, headers: { 'Retry-After': '12' } });
  await assert.rejects(b.clock.settle(a.client.login('alice', 'pw')), { status: 429, error: 'slow_down', retryAfter: 12 });
  assert.equal(a.client.loggedIn, false);
});

test('socialLoginUrl makes an S256 challenge; completeSocialLogin exchanges the code', async () => {
  const b = browser();
  const a = b.tab();
  const url = new URL(await a.client.socialLoginUrl('google', 'https://app.example.com/back'));
  assert.equal(url.origin + url.pathname, `${BASE}/auth/oidc/google/login`);
  assert.equal(url.searchParams.get('return_to'), 'https://app.example.com/back');
  assert.equal(url.searchParams.get('code_challenge_method'), 'S256');
  let sent;
  const exchange = b.server.handle.bind(b.server);
  b.server.handle = (u, init) => ((sent = JSON.parse(init.body)), exchange(u, init));
  assert.equal(await a.client.completeSocialLogin('?other=1'), false);
  assert.equal(await b.clock.settle(a.client.completeSocialLogin('?login_code=abc')), true);
  assert.equal(sent.login_code, 'abc');
  const challenge = createHash('sha256').update(sent.code_verifier).digest('base64url');
  assert.equal(url.searchParams.get('code_challenge'), challenge);
  assert.ok(a.client.loggedIn);
  await assert.rejects(a.client.completeSocialLogin('?login_code=again'), { error: 'invalid_grant' }); // verifier used up
  await assert.rejects(a.client.completeSocialLogin('?error=access_denied&error_description=no'), { error: 'access_denied' });
});

test('expires_in is measured on the local clock at receipt, not against the JWT exp', async () => {
  const clock = new FakeClock();
  // tokend's clock is an hour behind the browser's: its exp claims look long past here
  const server = new FakeServer({ now: () => clock.now() - 3_600_000, setTimeout: clock.setTimeout });
  const c = createTokendClient({
    baseUrl: BASE,
    fetch: server.fetch,
    storage: null,
    locks: null,
    BroadcastChannel: null,
    now: clock.now,
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
  });
  await clock.settle(c.login('alice', 'pw'));
  await clock.advance(200_000);
  assert.ok(await clock.settle(c.accessToken()));
  assert.equal(server.counts.refresh, 0);
  await clock.advance(90_000); // 10 s left of the 300 s expires_in: due
  await clock.settle(c.accessToken());
  await clock.advance(50); // the refresh ahead runs in the background
  assert.equal(server.counts.refresh, 1);
});
