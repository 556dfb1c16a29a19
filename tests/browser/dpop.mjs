// DPoP in Chromium: the client with dpop: true keeps a non-extractable P-256 key in IndexedDB
// (its private half cannot be exported, it survives a reload), and an access token copied out
// of the page is refused when replayed from another browser context: as Bearer, and as DPoP
// with a proof signed by that context's own key (the nonce fetched, so only the key differs).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { config, launch, servePages, clientPage, openClientPage, result } from './harness.mjs';

const origin = config.pages[0];
const server = await servePages(origin, () => clientPage(config.tokend));
const browser = await launch();
const me = `${config.tokend}/auth/me`;
const claims = (token) => JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
const thumbprint = ({ crv, kty, x, y }) => createHash('sha256').update(JSON.stringify({ crv, kty, x, y })).digest('base64url');

// In a page: window.signedCall(privateKey, publicJwk, url, token) — GET url with
// Authorization: DPoP <token> and a proof written here (not the client's code), repeated
// once with the DPoP-Nonce tokend asks for; and window.storedPair(), the client's key pair
// as IndexedDB gives it back.
const HELPERS = `
const b64 = (bytes) => btoa(String.fromCharCode(...new Uint8Array(bytes))).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
const enc = (o) => b64(new TextEncoder().encode(JSON.stringify(o)));
const done = (r) => new Promise((ok, ko) => ((r.onsuccess = () => ok(r.result)), (r.onerror = () => ko(r.error))));
window.signedCall = async (privateKey, jwk, url, token) => {
  const ath = b64(await crypto.subtle.digest('SHA-256', new TextEncoder().encode(token)));
  let nonce;
  for (let attempt = 0; ; attempt++) {
    const claims = { jti: crypto.randomUUID(), htm: 'GET', htu: url, iat: Math.floor(Date.now() / 1000), ath, ...(nonce ? { nonce } : {}) };
    const input = enc({ typ: 'dpop+jwt', alg: 'ES256', jwk }) + '.' + enc(claims);
    const sig = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, privateKey, new TextEncoder().encode(input));
    const res = await fetch(url, { headers: { Authorization: 'DPoP ' + token, DPoP: input + '.' + b64(sig) } });
    const challenge = res.headers.get('WWW-Authenticate') || '';
    nonce = res.headers.get('DPoP-Nonce');
    if (attempt || !nonce || !challenge.includes('use_dpop_nonce')) return { status: res.status, challenge, nonceRetries: attempt };
  }
};
window.storedPair = async (tokend) => {
  const db = await done(indexedDB.open('tokend-dpop'));
  return done(db.transaction('keys', 'readonly').objectStore('keys').get('tokend-dpop:' + tokend));
};
`;

async function dpopPage(context) {
  const page = await openClientPage(context, origin);
  await page.evaluate(HELPERS);
  await page.evaluate((tokend) => {
    window.client = window.createTokendClient({ baseUrl: tokend, storage: localStorage, dpop: true });
  }, config.tokend);
  return page;
}

const login = (page) => page.evaluate(({ user, password }) => window.client.login(user, password), config);
const call = (page) => page.evaluate(async (url) => {
  const res = await window.client.fetch(url);
  return { status: res.status, body: await res.json() };
}, me);

try {
  const context = await browser.newContext();
  const sent = []; // what the page's client sent to /auth/me and the token endpoints
  context.on('request', (request) => {
    const path = new URL(request.url()).pathname;
    if (request.method() !== 'OPTIONS' && request.url().startsWith(config.tokend)) {
      const headers = request.headers();
      sent.push({ path, scheme: (headers.authorization || '').split(' ')[0], proof: Boolean(headers.dpop) });
    }
  });
  let page = await dpopPage(context);
  await login(page);
  const token = await page.evaluate(() => window.client.accessToken());
  const first = await call(page);
  assert.equal(first.status, 200, JSON.stringify(first));

  // The key as the page itself finds it in IndexedDB: its private half will not come out.
  const key = await page.evaluate(async (tokend) => {
    const pair = await window.storedPair(tokend);
    const attempt = (format) => crypto.subtle.exportKey(format, pair.privateKey).then(() => 'exported', (e) => e.name);
    const { crv, kty, x, y } = await crypto.subtle.exportKey('jwk', pair.publicKey);
    return {
      type: pair.privateKey.type,
      extractable: pair.privateKey.extractable,
      algorithm: pair.privateKey.algorithm,
      pkcs8: await attempt('pkcs8'),
      jwk: await attempt('jwk'),
      publicJwk: { crv, kty, x, y },
    };
  }, config.tokend);

  // A reload: a new client in a new document finds the same key (the stored token still
  // works, and the next login's token is bound to the same key).
  await page.reload();
  await page.waitForFunction(() => document.title === 'ready', null, { timeout: 10000 });
  await page.evaluate(HELPERS);
  await page.evaluate((tokend) => {
    window.client = window.createTokendClient({ baseUrl: tokend, storage: localStorage, dpop: true });
  }, config.tokend);
  const afterReload = await call(page);
  await login(page);
  const copied = await page.evaluate((tokend) => JSON.parse(localStorage.getItem('tokend-tokens:' + tokend)).access_token, config.tokend);
  // The control: the page's own key, with the same hand-written proof, is accepted.
  const own = await page.evaluate(async ({ tokend, url, token }) => {
    const pair = await window.storedPair(tokend);
    const { crv, kty, x, y } = await crypto.subtle.exportKey('jwk', pair.publicKey);
    return window.signedCall(pair.privateKey, { crv, kty, x, y }, url, token);
  }, { tokend: config.tokend, url: me, token: copied });

  // Another browser context (its own IndexedDB, its own key) replays the copied token.
  const thief = await browser.newContext();
  const other = await openClientPage(thief, origin);
  await other.evaluate(HELPERS);
  const replay = await other.evaluate(async ({ url, token }) => {
    const bearer = await fetch(url, { headers: { Authorization: 'Bearer ' + token } });
    const pair = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
    const { crv, kty, x, y } = await crypto.subtle.exportKey('jwk', pair.publicKey);
    const dpop = await window.signedCall(pair.privateKey, { crv, kty, x, y }, url, token);
    return { bearer: { status: bearer.status, challenge: bearer.headers.get('WWW-Authenticate') }, dpop, jkt: { crv, kty, x, y } };
  }, { url: me, token: copied });
  await thief.close();

  result({
    jkt: claims(token).cnf.jkt,
    keyJkt: thumbprint(key.publicJwk),
    reloadJkt: claims(copied).cnf.jkt,
    thiefJkt: thumbprint(replay.jkt),
    key: { ...key, publicJwk: undefined },
    first: first.status,
    afterReload: afterReload.status,
    own,
    replay: { bearer: replay.bearer, dpop: replay.dpop },
    sent,
  });
} finally {
  await browser.close();
  server.close();
}
