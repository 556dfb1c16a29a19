// DPoP (option dpop): proofs checked with Node's own WebCrypto against a fake tokend, the key
// in a fake IndexedDB (non-extractable, reused by the next client), nonce retries.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createTokendClient } from '../src/tokend-client.js';

const BASE = 'https://tokend.test';
const subtle = globalThis.crypto.subtle;
const enc = (text) => new TextEncoder().encode(text);
const b64u = (bytes) => Buffer.from(bytes).toString('base64url');
const json = (part) => JSON.parse(Buffer.from(part, 'base64url').toString());
const sha256 = async (text) => b64u(new Uint8Array(await subtle.digest('SHA-256', enc(text))));
const thumbprint = ({ crv, kty, x, y }) => sha256(JSON.stringify({ crv, kty, x, y }));

/** IndexedDB as the client uses it: open (+ upgradeneeded), one store, get and add. */
class FakeIndexedDB {
  constructor() {
    this.stores = new Map(); // "db/store" → Map
  }

  request(work) {
    const r = {};
    setImmediate(() => {
      try {
        r.result = work(r);
      } catch (e) {
        r.error = e;
        return r.onerror && r.onerror();
      }
      r.onsuccess && r.onsuccess();
    });
    return r;
  }

  open(name) {
    return this.request((r) => {
      const fresh = ![...this.stores.keys()].some((k) => k.startsWith(name + '/'));
      r.result = {
        createObjectStore: (store) => this.stores.set(`${name}/${store}`, new Map()),
        transaction: (store) => ({ objectStore: () => this.objectStore(this.stores.get(`${name}/${store}`)) }),
      };
      if (fresh && r.onupgradeneeded) r.onupgradeneeded();
      return r.result;
    });
  }

  objectStore(map) {
    return {
      get: (key) => this.request(() => map.get(key)),
      add: (value, key) =>
        this.request(() => {
          if (map.has(key)) throw new DOMException('key exists', 'ConstraintError');
          map.set(key, value);
          return key;
        }),
    };
  }

  /** The CryptoKeyPairs stored (the structured clone keeps CryptoKeys as they are). */
  pairs() {
    return [...this.stores.values()].flatMap((m) => [...m.values()]);
  }
}

/** tokend behind fetch: checks every proof (signature, typ, htm, htu, iat, jti, ath, nonce)
 * and binds tokens to the proof's key (cnf.jkt). */
class DPoPServer {
  constructor({ nonces = false } = {}) {
    this.nonces = nonces;
    this.nonce = 'n1';
    this.jtis = new Set();
    this.requests = []; // {method, url, headers, proof: {header, claims, jkt} | null, status}
    this.rejectOnce = false; // the next API call: 401 DPoP error="invalid_token"
    this.n = 0;
    this.fetch = async (input, init = {}) => {
      const method = new Request(String(input), { method: init.method || 'GET' }).method; // as sent
      const r = { method, url: String(input), headers: new Headers(init.headers) };
      this.requests.push(r);
      const res = await this.handle(r, init);
      r.status = res.status;
      return res;
    };
  }

  async verify(r, accessToken) {
    const proof = r.headers.get('DPoP');
    if (!proof) return { error: 'no proof' };
    const [h, c, s] = proof.split('.');
    const header = json(h);
    const claims = json(c);
    const key = await subtle.importKey('jwk', header.jwk, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']);
    const ok = await subtle.verify({ name: 'ECDSA', hash: 'SHA-256' }, key, Buffer.from(s, 'base64url'), enc(`${h}.${c}`));
    const u = new URL(r.url);
    const problems = [
      !ok && 'signature',
      header.typ !== 'dpop+jwt' && 'typ',
      header.alg !== 'ES256' && 'alg',
      'd' in header.jwk && 'private jwk',
      claims.htm !== r.method && 'htm',
      claims.htu !== u.origin + u.pathname && 'htu',
      Math.abs(claims.iat - Date.now() / 1000) > 60 && 'iat',
      (!claims.jti || this.jtis.has(claims.jti)) && 'jti',
      accessToken && claims.ath !== (await sha256(accessToken)) && 'ath',
      !accessToken && 'ath' in claims && 'ath on a token request',
    ].filter(Boolean);
    this.jtis.add(claims.jti);
    r.proof = { header, claims, jkt: await thumbprint(header.jwk) };
    if (problems.length) return { error: problems.join(', ') };
    if (this.nonces && claims.nonce !== this.nonce) return { nonce: true };
    return r.proof;
  }

  answer(body, status = 200, headers = {}) {
    const h = { ...headers };
    if (this.nonces) h['DPoP-Nonce'] = this.nonce;
    return Response.json(body, { status, headers: h });
  }

  issue(jkt) {
    const n = ++this.n;
    const access = `${b64u(enc('{"alg":"ES256"}'))}.${b64u(enc(JSON.stringify({ sub: 'alice', n, cnf: { jkt } })))}.sig`;
    return this.answer({ access_token: access, token_type: 'DPoP', expires_in: 300, refresh_token: `r${n}.${jkt}` });
  }

  async handle(r, init) {
    const path = new URL(r.url).pathname;
    const [scheme, token] = (r.headers.get('Authorization') || ' ').split(' ');
    if (path === '/api/me' || path === '/auth/logout') {
      if (scheme !== 'DPoP') return this.answer({ error: 'invalid_token' }, 401, { 'WWW-Authenticate': 'DPoP algs="ES256"' });
      const p = await this.verify(r, token);
      if (p.nonce) return this.answer({ error: 'use_dpop_nonce' }, 401, { 'WWW-Authenticate': 'DPoP error="use_dpop_nonce"' });
      const bound = json(token.split('.')[1]).cnf.jkt;
      if (p.error || p.jkt !== bound || this.rejectOnce) {
        this.rejectOnce = false;
        return this.answer({ error: 'invalid_token' }, 401, { 'WWW-Authenticate': `DPoP error="invalid_token", error_description="${p.error}"` });
      }
      return path === '/api/me' ? this.answer({ jkt: p.jkt }) : new Response(null, { status: 204 });
    }
    const p = await this.verify(r, null);
    if (p.nonce) return this.answer({ error: 'use_dpop_nonce', error_description: 'nonce' }, 400);
    if (p.error) return this.answer({ error: 'invalid_dpop_proof', error_description: p.error }, 400);
    if (path === '/auth/refresh' && !token.endsWith('.' + p.jkt)) return this.answer({ error: 'invalid_dpop_proof' }, 400);
    if (path === '/auth/login' && JSON.parse(init.body).password !== 'pw') return this.answer({ error: 'invalid_grant' }, 401);
    return this.issue(p.jkt);
  }
}

const make = (server, indexedDB, extra = {}) =>
  createTokendClient({ baseUrl: BASE, dpop: true, indexedDB, fetch: server.fetch, storage: null, locks: null, BroadcastChannel: null, ...extra });

test('dpop: login, fetch and refresh carry proofs that verify; Authorization: DPoP with ath', async () => {
  const server = new DPoPServer();
  const client = make(server, new FakeIndexedDB());
  await client.login('alice', 'pw');
  const token = await client.accessToken();
  const login = server.requests[0];
  assert.equal(login.status, 200);
  const jkt = login.proof.jkt;
  assert.equal(json(token.split('.')[1]).cnf.jkt, jkt);
  assert.deepEqual(Object.keys(login.proof.header.jwk).sort(), ['crv', 'kty', 'x', 'y']); // public only

  const res = await client.fetch(`${BASE}/api/me?page=2`, { headers: { Accept: 'application/json' } });
  assert.equal(res.status, 200);
  const call = server.requests.at(-1);
  assert.equal(call.headers.get('Authorization'), `DPoP ${token}`);
  assert.equal(call.headers.get('Accept'), 'application/json');
  assert.equal(call.proof.claims.ath, await sha256(token));
  assert.equal(call.proof.claims.htu, `${BASE}/api/me`); // no query
  assert.equal(call.proof.claims.htm, 'GET');
  assert.equal(call.proof.jkt, jkt);

  server.rejectOnce = true; // a DPoP invalid_token challenge: refresh (with a proof), repeat once
  assert.equal((await client.fetch(`${BASE}/api/me`, { method: 'POST', body: 'x' })).status, 200);
  const paths = server.requests.slice(-3).map((r) => `${r.method} ${new URL(r.url).pathname} ${r.status}`);
  assert.deepEqual(paths, ['POST /api/me 401', 'POST /auth/refresh 200', 'POST /api/me 200']);
  const refresh = server.requests.at(-2);
  assert.equal(refresh.proof.jkt, jkt);
  assert.equal(refresh.proof.claims.ath, undefined);
  assert.notEqual(await client.accessToken(), token);

  await client.logout();
  assert.equal(server.requests.at(-1).status, 204);
  assert.equal(server.requests.at(-1).headers.get('Authorization').split(' ')[0], 'DPoP');
});

test('dpop: the key is non-extractable, kept in IndexedDB and reused by the next client', async () => {
  const server = new DPoPServer();
  const db = new FakeIndexedDB();
  await make(server, db).login('alice', 'pw');
  await make(server, db).login('alice', 'pw'); // a reload: a new client on the same storage
  await make(server, new FakeIndexedDB()).login('alice', 'pw'); // another browser
  const [first, second, other] = server.requests.map((r) => r.proof.jkt);
  assert.equal(first, second);
  assert.notEqual(first, other);
  const pairs = db.pairs();
  assert.equal(pairs.length, 1);
  assert.equal(pairs[0].privateKey.extractable, false);
  await assert.rejects(subtle.exportKey('pkcs8', pairs[0].privateKey));
  await assert.rejects(subtle.exportKey('jwk', pairs[0].privateKey));

  // Two clients of one page making their key at once: one key wins, both use it.
  const race = new FakeIndexedDB();
  await Promise.all([make(server, race).login('alice', 'pw'), make(server, race).login('alice', 'pw')]);
  const raced = server.requests.slice(-2).map((r) => r.proof.jkt);
  assert.equal(race.pairs().length, 1);
  const stored = await thumbprint(await subtle.exportKey('jwk', race.pairs()[0].publicKey));
  assert.deepEqual(raced, [stored, stored]);
});

test('dpop: a use_dpop_nonce answer is repeated once with the nonce, which is kept', async () => {
  const server = new DPoPServer({ nonces: true });
  const client = make(server, new FakeIndexedDB());
  await client.login('alice', 'pw');
  assert.deepEqual(server.requests.map((r) => r.status), [400, 200]);
  assert.equal(server.requests[1].proof.claims.nonce, 'n1');

  assert.equal((await client.fetch(`${BASE}/api/me`)).status, 200); // the nonce was kept
  assert.equal(server.requests.length, 3);

  server.nonce = 'n2'; // rotated: one 401 with the new nonce, one repeat
  assert.equal((await client.fetch(`${BASE}/api/me`)).status, 200);
  assert.deepEqual(server.requests.slice(-2).map((r) => [r.status, r.proof.claims.nonce]), [[401, 'n1'], [200, 'n2']]);

  // A server that wants yet another nonce every time: repeated once, never twice.
  const stubborn = server.handle.bind(server);
  server.handle = (r, init) => ((server.nonce = `n${server.requests.length + 10}`), stubborn(r, init));
  const before = server.requests.length;
  assert.equal((await client.fetch(`${BASE}/api/me`)).status, 401);
  assert.equal(server.requests.length - before, 2);
});

test('dpop: exchange carries a proof; without the option nothing changes (Bearer, no DPoP header)', async () => {
  const server = new DPoPServer();
  const client = make(server, new FakeIndexedDB());
  server.handle = ((inner) => (r, init) => (new URL(r.url).pathname === '/auth/oidc/exchange' ? server.verify(r, null).then((p) => server.issue(p.jkt)) : inner(r, init)))(server.handle.bind(server));
  await client.exchange('code', 'verifier');
  assert.ok(server.requests[0].proof && server.requests[0].proof.claims.htu === `${BASE}/auth/oidc/exchange`);

  const requests = [];
  const plain = createTokendClient({
    baseUrl: BASE,
    storage: null,
    locks: null,
    BroadcastChannel: null,
    indexedDB: null,
    fetch: async (url, init) => {
      requests.push(new Headers(init.headers));
      return Response.json({ access_token: 'a.e30.s', refresh_token: 'r', expires_in: 300 });
    },
  });
  await plain.login('alice', 'pw');
  await plain.fetch(`${BASE}/api/me`);
  assert.equal(requests[1].get('Authorization'), 'Bearer a.e30.s');
  assert.ok(requests.every((h) => !h.has('DPoP')));
});

test('dpop: htm is the method as fetch sends it (post → POST, patch stays patch)', async () => {
  const server = new DPoPServer();
  const client = make(server, new FakeIndexedDB());
  await client.login('alice', 'pw');
  for (const method of ['post', 'patch', 'PATCH']) {
    const res = await client.fetch(`${BASE}/api/me`, { method, body: 'x' });
    const call = server.requests.at(-1);
    assert.equal(call.proof.claims.htm, new Request(`${BASE}/api/me`, { method, body: 'x' }).method);
    assert.equal(res.status, 200, method);
  }
});
