// Refresh: single flight within a tab and across tabs, ahead of expiry, on 401, retries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { browser, BASE } from './fakes.js';

/** n tabs of one browser, logged in through the first; time moved to when a refresh is due. */
async function loggedInTabs(n, options, tabOptions) {
  const b = browser(options);
  const tabs = Array.from({ length: n }, () => b.tab(tabOptions));
  await b.clock.settle(tabs[0].client.login('alice', 'pw'));
  await b.clock.flush();
  return { b, tabs };
}

for (const [name, options] of [
  ['Web Locks', {}],
  ['the storage lease (no Web Locks), tabs seeing writes late', { locks: false, lag: true }],
]) {
  test(`five tabs with an expired token at once: one refresh, all get it, no reuse (${name})`, async () => {
    const { b, tabs } = await loggedInTabs(5, options);
    assert.ok(tabs.every((t) => t.client.loggedIn));
    await b.clock.advance(301_000); // past expiry: every tab must refresh before a call
    const got = await b.clock.settle(Promise.all(tabs.map((t) => t.client.accessToken())));
    assert.equal(b.server.counts.refresh, 1);
    assert.equal(b.server.counts.reuse, 0);
    assert.equal(new Set(got).size, 1);
    assert.equal(b.server.alive(), 1);
    const me = await b.clock.settle(Promise.all(tabs.map((t) => t.client.fetch(`${BASE}/api/me`))));
    assert.deepEqual(me.map((r) => r.status), [200, 200, 200, 200, 200]);
    assert.equal(b.server.counts.refresh, 1);
  });
}

test('storage mode: a tab that waited for the lock uses the tokens broadcast by the tab before it, though the storage write reaches it late', async () => {
  const { b, tabs } = await loggedInTabs(5, { storageDelay: 500 });
  await b.clock.advance(301_000);
  const got = await b.clock.settle(Promise.all(tabs.map((t) => t.client.accessToken())));
  assert.equal(new Set(got).size, 1);
  assert.equal(b.server.counts.refresh, 1); // no tab sent the rotated refresh token again
  assert.equal(b.server.counts.grace, 0);
  assert.equal(b.server.counts.reuse, 0);
});

test('many calls in one tab share one refresh', async () => {
  const { b, tabs } = await loggedInTabs(1, { locks: false, channels: false }, { storage: null });
  await b.clock.advance(301_000);
  const all = Promise.all(Array.from({ length: 10 }, () => tabs[0].client.fetch(`${BASE}/api/me`)));
  const res = await b.clock.settle(all);
  assert.ok(res.every((r) => r.status === 200));
  assert.equal(b.server.counts.refresh, 1);
});

test('a tab refreshes ahead of expiry (less than min(30 s, 20 %) left), not before', async () => {
  const { b, tabs } = await loggedInTabs(1);
  const first = await tabs[0].client.accessToken();
  await b.clock.advance(239_000); // 61 s left of 300: not due
  assert.equal(await b.clock.settle(tabs[0].client.accessToken()), first);
  assert.equal(b.server.counts.refresh, 0);
  await b.clock.advance(45_000); // 16 s left: due, still valid
  const res = await b.clock.settle(tabs[0].client.fetch(`${BASE}/api/me`));
  assert.equal(res.status, 200);
  await b.clock.advance(0); // the background refresh yields once to messages first
  assert.equal(b.server.counts.refresh, 1);
  assert.notEqual(await tabs[0].client.accessToken(), first);
  assert.equal(b.server.counts.api, 1); // nothing waited for a 401
});

test('a 401 invalid_token refreshes once and repeats once, never twice', async () => {
  const { b, tabs } = await loggedInTabs(1);
  b.server.rejectApi = 1;
  const ok = await b.clock.settle(tabs[0].client.fetch(`${BASE}/api/me`));
  assert.equal(ok.status, 200);
  assert.equal(b.server.counts.refresh, 1);
  assert.equal(b.server.counts.api, 2);
  b.server.rejectApi = 5; // tokend keeps refusing: one refresh, one repeat, then the 401
  const refused = await b.clock.settle(tabs[0].client.fetch(`${BASE}/api/me`));
  assert.equal(refused.status, 401);
  assert.equal(b.server.counts.refresh, 2);
  assert.equal(b.server.counts.api, 4);
});

test('a 401 without invalid_token is returned as is, no refresh', async () => {
  const { b, tabs } = await loggedInTabs(1);
  const res = await b.clock.settle(tabs[0].client.fetch(`${BASE}/api/me`, { headers: { Authorization: 'x' } }));
  assert.equal(res.status, 200); // our Authorization replaces a stale one
  const server = b.server;
  server.api = () => new Response(null, { status: 401, headers: { 'WWW-Authenticate': 'Bearer realm="x"' } });
  const plain = await b.clock.settle(tabs[0].client.fetch(`${BASE}/api/me`));
  assert.equal(plain.status, 401);
  assert.equal(server.counts.refresh, 0);
});

test('a refresh lost on the network is retried; the grace returns the same successor', async () => {
  const { b, tabs } = await loggedInTabs(2);
  await b.clock.advance(301_000);
  b.server.refreshFaults.push('network', 'lost');
  const res = await b.clock.settle(tabs[0].client.fetch(`${BASE}/api/me`));
  assert.equal(res.status, 200);
  assert.equal(b.server.counts.refresh, 3); // refused, done but lost, replayed in the grace
  assert.equal(b.server.counts.grace, 1);
  assert.equal(b.server.counts.reuse, 0);
  assert.ok(tabs.every((t) => t.client.loggedIn && t.loginRequired === 0));
  assert.equal((await b.clock.settle(tabs[1].client.fetch(`${BASE}/api/me`))).status, 200);
});

test('a 503 with Retry-After is waited for, then retried, still logged in', async () => {
  const { b, tabs } = await loggedInTabs(1);
  await b.clock.advance(301_000);
  b.server.refreshFaults.push({ status: 503, retryAfter: 7 });
  const start = b.clock.now();
  const token = tabs[0].client.accessToken();
  await b.clock.advance(6_900);
  assert.equal(b.server.counts.refresh, 1); // not retried before Retry-After
  await b.clock.advance(200);
  assert.equal(b.server.counts.refresh, 2);
  assert.ok(await b.clock.settle(token));
  assert.ok(b.clock.now() - start >= 7_000);
  assert.equal(tabs[0].loginRequired, 0);
});

test('without Web Locks, a Retry-After longer than the lease keeps the lease: no second refresher', async () => {
  const { b, tabs } = await loggedInTabs(3, { locks: false });
  await b.clock.advance(301_000);
  b.server.refreshFaults.push({ status: 503, retryAfter: 40 });
  const got = await b.clock.settle(Promise.all(tabs.map((t) => t.client.accessToken())));
  assert.equal(new Set(got).size, 1);
  assert.equal(b.server.counts.refresh, 2); // the 503, then the one retry after 40 s
});

test('tokend down for good: the refresh gives up with temporarily_unavailable, tokens kept', async () => {
  const { b, tabs } = await loggedInTabs(1, { });
  await b.clock.advance(301_000);
  b.server.refreshFaults.push(...Array(6).fill({ status: 502 }));
  await assert.rejects(b.clock.settle(tabs[0].client.accessToken()), { error: 'temporarily_unavailable' });
  assert.equal(b.server.counts.refresh, 6);
  assert.ok(tabs[0].client.loggedIn);
  assert.equal(tabs[0].loginRequired, 0);
  assert.ok(await b.clock.settle(tabs[0].client.accessToken())); // tokend is back
});

test('invalid_grant/401 from refresh: tokens cleared, onLoginRequired once in every tab', async () => {
  const { b, tabs } = await loggedInTabs(3);
  await b.clock.advance(301_000);
  b.server.kill('s1'); // e.g. an admin revoked the session
  const calls = [1, 2, 3].map(() => tabs[0].client.fetch(`${BASE}/api/me`));
  const results = await b.clock.settle(Promise.allSettled(calls)); // the other tabs are idle
  assert.ok(results.every((r) => r.status === 'rejected' && r.reason.error === 'login_required'));
  await b.clock.flush();
  assert.ok(tabs.every((t) => !t.client.loggedIn));
  assert.equal(b.area.map.size, 0);
  assert.equal(b.server.counts.refresh, 1);
  assert.deepEqual(tabs.map((t) => t.loginRequired), [1, 1, 1]); // the idle tabs were told
  for (const t of tabs) assert.equal(await b.clock.settle(t.client.accessToken()), null);
  await assert.rejects(b.clock.settle(tabs[1].client.fetch(`${BASE}/api/me`)), { error: 'login_required' });
  assert.deepEqual(tabs.map((t) => t.loginRequired), [1, 1, 1]);
});
