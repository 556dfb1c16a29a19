// tokend-client: the browser half of tokend's token flow, one ES module, no dependencies.
//
// - Requests carry the access token; it is refreshed ahead of expiry (less than
//   min(30 s, 20 % of its lifetime) left) and on a 401 whose WWW-Authenticate says
//   invalid_token, after which the request is repeated once (never twice).
// - Single flight: one refresh promise per tab, and one refresh at a time across tabs
//   (navigator.locks 'tokend-refresh:' + baseUrl; without it a lease in localStorage).
//   Inside the lock a tab first looks for a token another tab already got (the storage in
//   storage mode, BroadcastChannel 'tokend:' + baseUrl in cookie mode) and uses it: two
//   refreshes with one refresh token would look like reuse to tokend and end the session.
// - A refresh lost on the network, 429 or 5xx is retried with backoff (Retry-After wins)
//   and never logs out; only 400/401 from /auth/refresh does (onLoginRequired, all tabs).
// - Cookie mode: the refresh token is tokend's HttpOnly cookie, the access token lives in
//   memory only; every request to tokend has credentials:'include' and X-Tokend-CSRF: 1.
// - DPoP (RFC 9449, option dpop): a non-extractable ECDSA P-256 key, the CryptoKeyPair itself
//   kept in IndexedDB ('tokend-dpop', one per baseUrl) so it survives reloads; a proof on
//   login, refresh and exchange, and with a bound token (cnf.jkt) on every call (ath), sent as
//   Authorization: DPoP. Each DPoP-Nonce answered is kept per origin for the next proof; an
//   answer asking for one (use_dpop_nonce) is repeated once with it.

/** An error answer from tokend (status, OAuth error code, description, Retry-After seconds);
 * status 0: tokend could not be reached. */
export class TokendError extends Error {
  /** @param {number} status @param {string} error @param {string} [description] @param {number|null} [retryAfter] */
  constructor(status, error, description = '', retryAfter = null) {
    super(description ? `${error}: ${description}` : error);
    this.name = 'TokendError';
    this.status = status;
    this.error = error;
    this.description = description;
    this.retryAfter = retryAfter;
  }
}

/**
 * @typedef {{access_token: string, refresh_token?: string, expires_at: number, lifetime: number}} Tokens
 * @typedef {{loggedIn: boolean, reason: 'login'|'refresh'|'logout'}} ChangeEvent
 */

const AHEAD_MAX = 30_000; // refresh at most this long before expiry...
const AHEAD_SHARE = 0.2; // ...or when this share of the lifetime is left, whichever is less
const LEASE_MS = 15_000;

/** Seconds of a Retry-After header (delta-seconds or an HTTP date), or null. */
function retryAfterOf(headers, nowMs) {
  const raw = headers.get('Retry-After');
  if (!raw) return null;
  if (/^\d+$/.test(raw.trim())) return Number(raw.trim());
  const at = Date.parse(raw);
  return Number.isNaN(at) ? null : Math.max(0, Math.ceil((at - nowMs) / 1000));
}

/** The payload of a JWT, or {} when it is not one. */
function jwtClaims(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part + '='.repeat((4 - (part.length % 4)) % 4)));
  } catch {
    return {};
  }
}

/** f(), or null when it throws (bad JSON; localStorage refused by the browser). */
function attempt(f) {
  try {
    return f() ?? null;
  } catch {
    return null;
  }
}

const parseJson = (text) => (text ? attempt(() => JSON.parse(text)) : null);

/** Run a callback of the app's; its bug is reported but does not break the client. */
function safely(f, ...args) {
  try {
    f(...args);
  } catch (e) {
    queueMicrotask(() => {
      throw e;
    });
  }
}

function base64url(bytes) {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

const utf8 = (text) => new TextEncoder().encode(text);
const b64json = (o) => base64url(utf8(JSON.stringify(o)));

/** An IDBRequest as a promise. */
const idbDone = (r) => new Promise((resolve, reject) => ((r.onsuccess = () => resolve(r.result)), (r.onerror = () => reject(r.error))));

/** Whether an answer asks for a DPoP proof with the server's nonce (400 body or 401 challenge). */
async function wantsNonce(res) {
  if (res.status === 401) return /error="?use_dpop_nonce/.test(res.headers.get('WWW-Authenticate') || '');
  return res.status === 400 && (parseJson(await res.clone().text().catch(() => '')) || {}).error === 'use_dpop_nonce';
}

/** A TokendError from a non-2xx answer. */
async function errorOf(res, nowMs) {
  const body = parseJson(await res.text().catch(() => '')) || {};
  const error = body.error || `http_${res.status}`;
  return new TokendError(res.status, error, body.error_description || '', retryAfterOf(res.headers, nowMs));
}

/** Whether a refresh failure means the session is over (not worth retrying). */
const isDead = (e) => e instanceof TokendError && (e.status === 400 || e.status === 401);

/**
 * A client for one tokend.
 * @param {import('./tokend-client').TokendClientOptions} [options]
 * @returns {import('./tokend-client').TokendClient}
 */
export function createTokendClient(options = {}) {
  const g = globalThis;
  const baseUrl = (options.baseUrl || '').replace(/\/+$/, '');
  const cookie = Boolean(options.cookie);
  const doFetch = options.fetch || ((...a) => g.fetch(...a));
  const locks = 'locks' in options ? options.locks : g.navigator && g.navigator.locks;
  const Channel = 'BroadcastChannel' in options ? options.BroadcastChannel : g.BroadcastChannel;
  const now = options.now || (() => Date.now());
  const setT = options.setTimeout || ((f, ms) => g.setTimeout(f, ms));
  const clearT = options.clearTimeout || ((id) => g.clearTimeout(id));
  const random = options.random || Math.random;
  const cryptoApi = options.crypto || g.crypto;
  const local = 'storage' in options ? options.storage : attempt(() => g.localStorage);
  const storage = cookie ? null : local; // cookie mode never stores a token
  const session = 'sessionStorage' in options ? options.sessionStorage : attempt(() => g.sessionStorage);
  const events = 'storageEvents' in options ? options.storageEvents : g.window || null;
  const onLoginRequired = options.onLoginRequired || (() => {});
  const maxRetries = options.maxRetries ?? 5;
  const retryDelay = options.retryDelay ?? 1000;
  const maxRetryDelay = options.maxRetryDelay ?? 30_000;
  const shareWait = options.shareWait ?? 50;
  const dpop = Boolean(options.dpop);
  const idb = 'indexedDB' in options ? options.indexedDB : g.indexedDB;

  const tokensKey = 'tokend-tokens:' + baseUrl;
  const lockName = 'tokend-refresh:' + baseUrl;
  const leaseKey = 'tokend-refresh-lease:' + baseUrl;
  const pkceKey = 'tokend-pkce:' + baseUrl;
  const tabId = Math.floor(random() * 2 ** 52).toString(36) + now().toString(36);
  const channel = Channel ? new Channel('tokend:' + baseUrl) : null;
  const listeners = new Set();

  /** @type {Tokens|null} */
  let tokens = storage ? readStored() : null;
  /** @type {Promise<Tokens>|null} */
  let flight = null;
  let loginRequiredFired = false;
  /** @type {((t: Tokens) => void)|null} */
  let shareWaiter = null;
  /** @type {Promise<{pair: CryptoKeyPair, jwk: object}>|null} */
  let dpopKey = null;
  const nonces = new Map(); // origin → the last DPoP-Nonce it sent

  const sleep = (ms) => new Promise((resolve) => setT(resolve, ms));

  function readStored() {
    const t = parseJson(storage.getItem(tokensKey));
    return t && typeof t.access_token === 'string' ? t : null;
  }

  /** Tokens from a token body, timed by the local clock at receipt. */
  function fromBody(body) {
    const claims = jwtClaims(body.access_token); // its lifetime only: clocks differ
    const seconds = Number(body.expires_in) > 0 ? Number(body.expires_in) : claims.exp - claims.iat || 300;
    const t = { access_token: body.access_token, expires_at: now() + seconds * 1000, lifetime: seconds * 1000 };
    return cookie || !body.refresh_token ? t : { ...t, refresh_token: body.refresh_token };
  }

  const remaining = (t) => t.expires_at - now();
  const due = (t) => remaining(t) < Math.min(AHEAD_MAX, AHEAD_SHARE * t.lifetime);

  /** Take up tokens (ours or another tab's); listeners hear of real changes only. */
  function apply(t) {
    const before = tokens;
    tokens = t;
    if (t) loginRequiredFired = false;
    if ((before && before.access_token) === (t && t.access_token)) return;
    const reason = !t ? 'logout' : before ? 'refresh' : 'login';
    for (const cb of [...listeners]) safely(cb, { loggedIn: Boolean(t), reason });
  }

  /** The current tokens: the storage is the truth in storage mode, except that another
   * tab's broadcast may bring newer tokens before its storage write is visible here. */
  function current() {
    if (storage) {
      const stored = readStored();
      if (!(stored && tokens && tokens.expires_at > stored.expires_at)) apply(stored);
    }
    return tokens;
  }

  /** Keep new tokens and tell the other tabs. */
  function save(t) {
    if (storage) storage.setItem(tokensKey, JSON.stringify(t));
    apply(t);
    post({ type: 'tokens', tokens: t }); // same origin only, like the storage itself
  }

  function clear(required) {
    if (storage) storage.removeItem(tokensKey);
    apply(null);
    post({ type: 'logout', required });
    if (required) loginRequired();
  }

  function loginRequired() {
    if (!loginRequiredFired) safely(onLoginRequired);
    loginRequiredFired = true;
  }

  function post(message) {
    if (channel) channel.postMessage(message);
  }

  if (channel) {
    channel.onmessage = ({ data }) => {
      if (!data) return;
      if (data.type === 'tokens') {
        const t = data.tokens;
        if (t && (!tokens || t.expires_at >= tokens.expires_at)) apply(t);
        if (t && shareWaiter) shareWaiter(t);
      } else if (data.type === 'logout') {
        if (storage) current();
        else apply(null);
        if (data.required) loginRequired();
      } else if (data.type === 'ask' && cookie && tokens && !due(tokens)) {
        post({ type: 'tokens', tokens });
      }
    };
  }
  const onStorage = (e) => {
    if (e.key === tokensKey || e.key === null) current();
  };
  if (storage && events && events.addEventListener) events.addEventListener('storage', onStorage);

  // ---- DPoP: the key, proofs, nonces ----

  /** The key pair: from IndexedDB, else made (non-extractable) and added there. */
  function keyPair() {
    dpopKey = dpopKey || loadKey().catch((e) => ((dpopKey = null), Promise.reject(e)));
    return dpopKey;
  }

  async function loadKey() {
    const name = 'tokend-dpop:' + baseUrl;
    let db = null;
    if (idb) {
      const open = idb.open('tokend-dpop', 1);
      open.onupgradeneeded = () => open.result.createObjectStore('keys');
      db = await idbDone(open).catch(() => null); // no IndexedDB (private mode): a key per page
    }
    const keys = (mode) => db.transaction('keys', mode).objectStore('keys');
    let pair = db && (await idbDone(keys('readonly').get(name)));
    if (!pair) {
      const made = await cryptoApi.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign']);
      // add, not put: when another tab stored its key meanwhile, that one wins.
      pair = db ? await idbDone(keys('readwrite').add(made, name)).then(() => made, () => idbDone(keys('readonly').get(name))) : made;
    }
    const { crv, kty, x, y } = await cryptoApi.subtle.exportKey('jwk', pair.publicKey); // the public half only
    return { pair, jwk: { crv, kty, x, y } };
  }

  const originOf = (url) => new URL(url, g.location && g.location.href).origin;

  /** A DPoP proof for one request (with ath when an access token goes with it). */
  async function proof(method, url, accessToken) {
    const { pair, jwk } = await keyPair();
    const u = new URL(url, g.location && g.location.href);
    const jti = base64url(cryptoApi.getRandomValues(new Uint8Array(16)));
    // htm is the method as fetch sends it: it upper-cases only these (Fetch, "normalize")
    const upper = method.toUpperCase();
    const htm = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'POST', 'PUT'].includes(upper) ? upper : method;
    const claims = { jti, htm, htu: u.origin + u.pathname, iat: Math.floor(now() / 1000) };
    if (nonces.has(u.origin)) claims.nonce = nonces.get(u.origin);
    if (accessToken) claims.ath = base64url(new Uint8Array(await cryptoApi.subtle.digest('SHA-256', utf8(accessToken))));
    const input = `${b64json({ typ: 'dpop+jwt', alg: 'ES256', jwk })}.${b64json(claims)}`;
    const signature = await cryptoApi.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, pair.privateKey, utf8(input));
    return `${input}.${base64url(new Uint8Array(signature))}`; // WebCrypto's ECDSA is r||s already
  }

  /** fetch with Authorization for `token` (DPoP + proof when it is bound, else Bearer) and a
   * proof when `prove` (token endpoints); repeated once when the answer asks for a nonce. */
  async function send(target, init, token, prove = false) {
    const url = typeof target === 'string' ? target : target.url || String(target);
    for (let attempt = 0; ; attempt++) {
      const headers = new Headers(init.headers);
      const bound = Boolean(token && jwtClaims(token).cnf);
      if (token) headers.set('Authorization', `${bound ? 'DPoP' : 'Bearer'} ${token}`);
      if (dpop && (bound || prove)) headers.set('DPoP', await proof(init.method || 'GET', url, bound ? token : null));
      const res = await doFetch(target, { ...init, headers });
      const nonce = res.headers.get('DPoP-Nonce');
      if (nonce) nonces.set(originOf(url), nonce);
      if (attempt || !dpop || !nonce || !(await wantsNonce(res))) return res;
    }
  }

  /** Requests to tokend: JSON, and in cookie mode the cookie plus the CSRF header. */
  function tokendFetch(path, { method = 'POST', headers = {}, body, token, prove } = {}) {
    const init = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    if (cookie) {
      init.credentials = 'include';
      init.headers['X-Tokend-CSRF'] = '1';
    }
    return send(baseUrl + path, init, token, prove).catch((e) => {
      if (e instanceof TokendError) throw e;
      throw new TokendError(0, 'network_error', String(e && e.message ? e.message : e));
    });
  }

  /** POST a login-like call whose answer is a token body. */
  async function obtain(path, body) {
    const res = await tokendFetch(path, { body, prove: true });
    if (!res.ok) throw await errorOf(res, now());
    save(fromBody(await res.json()));
  }

  // ---- refresh: single flight in the tab, one at a time across tabs ----

  /** Run fn holding the cross-tab refresh lock. */
  function withLock(fn) {
    if (locks) return locks.request(lockName, () => fn());
    if (local) return withLease(fn);
    return fn(); // no way to coordinate tabs: single flight within this tab only
  }

  /** Fallback lock: a lease in localStorage (owner + expiry), confirmed by re-reading. */
  async function withLease(fn) {
    for (;;) {
      const lease = parseJson(local.getItem(leaseKey));
      if (!lease || lease.until <= now()) {
        takeLease();
        await sleep(20); // a tab that wrote at the same moment has written by now
        if (mine()) break;
      }
      await sleep(50 + random() * 50);
    }
    try {
      return await fn();
    } finally {
      if (mine()) local.removeItem(leaseKey);
    }
  }

  const mine = () => (parseJson(local.getItem(leaseKey)) || {}).owner === tabId;
  const takeLease = (ms = 0) => local.setItem(leaseKey, JSON.stringify({ owner: tabId, until: now() + ms + LEASE_MS }));

  /** New tokens instead of `stale` (the tokens that were found due or rejected). */
  function refresh(stale) {
    flight = flight || withLock(() => refreshLocked(stale)).finally(() => (flight = null));
    return flight;
  }

  /** In cookie mode a tab without a token first asks the others for theirs. */
  function askOthers() {
    return new Promise((resolve) => {
      const timer = setT(() => shareWaiter(null), shareWait);
      shareWaiter = (t) => (clearT(timer), (shareWaiter = null), resolve(t));
      post({ type: 'ask' });
    });
  }

  async function refreshLocked(stale) {
    // Let messages already sent by the tab that held the lock before this one arrive.
    if (channel) await sleep(0);
    let t = current();
    if (!t && cookie && channel && !stale) t = (await askOthers()) && tokens;
    // Another tab (or an earlier flight) got newer tokens while this one waited: use them.
    if (t && (!stale || t.access_token !== stale.access_token) && !due(t)) return t;
    if (!cookie && !(t && t.refresh_token)) {
      if (stale) clear(true);
      throw new TokendError(401, 'login_required', 'not logged in');
    }
    for (let attempt = 0; ; attempt++) {
      let failure;
      try {
        const headers = cookie ? {} : { Authorization: `Bearer ${t.refresh_token}` };
        const res = await tokendFetch('/auth/refresh', { headers, prove: true });
        if (res.ok) {
          const fresh = fromBody(await res.json());
          save(fresh);
          return fresh;
        }
        failure = await errorOf(res, now());
      } catch (e) {
        if (!(e instanceof TokendError)) throw e;
        failure = e;
      }
      if (isDead(failure)) {
        // Cookie mode, nothing known yet: no session here, but do not log other tabs out.
        if (stale || !cookie) clear(true);
        else {
          apply(null);
          loginRequired();
        }
        throw failure;
      }
      if (failure.status === 403) throw failure; // origin/CSRF refused: a setup error
      if (attempt >= maxRetries) {
        throw new TokendError(failure.status, 'temporarily_unavailable', failure.description, failure.retryAfter);
      }
      const backoff = Math.min(maxRetryDelay, retryDelay * 2 ** attempt) * (1 + random() / 4);
      const wait = failure.retryAfter != null ? failure.retryAfter * 1000 : backoff;
      if (!locks && local && mine()) takeLease(wait); // a long wait keeps the lease
      await sleep(wait);
    }
  }

  /** A valid access token, refreshing when due; null when logged out. */
  async function accessToken() {
    const t = current();
    if (t && !due(t)) return t.access_token;
    if (t && remaining(t) > 1000) {
      // Still valid: refresh ahead in the background, use this one meanwhile.
      refresh(t).catch(() => {});
      return t.access_token;
    }
    if (!t && !cookie) {
      loginRequired();
      return null;
    }
    try {
      return (await refresh(t)).access_token;
    } catch (e) {
      if (isDead(e)) return null;
      throw e;
    }
  }

  /** fetch with the access token; on 401 invalid_token one refresh and one repeat. */
  async function authFetch(send) {
    const token = await accessToken();
    if (!token) throw new TokendError(401, 'login_required', 'log in first');
    const res = await send(token);
    const challenge = res.headers.get('WWW-Authenticate') || '';
    if (res.status !== 401 || !/error="?invalid_token/.test(challenge)) return res; // Bearer's or DPoP's
    let fresh;
    try {
      fresh = await refresh(tokens && tokens.access_token === token ? tokens : { access_token: token });
    } catch (e) {
      if (isDead(e)) throw new TokendError(401, 'login_required', e.description);
      throw e;
    }
    return send(fresh.access_token);
  }

  /** An authenticated call to tokend itself; a non-2xx answer throws. */
  async function tokendCall(path, method = 'POST') {
    const res = await authFetch((token) => tokendFetch(path, { method, token }));
    if (!res.ok) throw await errorOf(res, now());
    return res;
  }

  const client = {
    get loggedIn() {
      return Boolean(current());
    },

    login: (username, password) => obtain('/auth/login', { username, password }),

    exchange: (loginCode, codeVerifier) =>
      obtain('/auth/oidc/exchange', { login_code: loginCode, code_verifier: codeVerifier }),

    accessToken,

    /** fetch(input, init) with Authorization added; nothing else is changed. */
    fetch(input, init = {}) {
      const request = typeof Request !== 'undefined' && input instanceof Request ? input : null;
      const method = init.method || (request ? request.method : 'GET');
      return authFetch((token) => send(input, { ...init, method, headers: init.headers || (request ? request.headers : undefined) }, token));
    },

    async logout() {
      let failure = null;
      try {
        // Storage mode needs a live access token; in cookie mode the cookie names the session.
        const t = current();
        const live = t && remaining(t) > 1000 ? t.access_token : null;
        const token = live || (t && !cookie ? await accessToken().catch(() => null) : null);
        if (token || cookie) {
          const res = await tokendFetch('/auth/logout', { token: token || undefined });
          if (!res.ok && res.status !== 401) failure = await errorOf(res, now());
        }
      } catch (e) {
        failure = e;
      }
      clear(false); // logged out here whatever tokend said
      if (failure) throw failure;
    },

    async logoutAll() {
      await tokendCall('/auth/logout-all');
      clear(false);
    },

    async logoutOthers() {
      await tokendCall('/auth/logout-others');
    },

    async sessions() {
      const all = [];
      let cursor = null;
      for (let page = 0; page < 100; page++) {
        const query = cursor === null ? '' : `?cursor=${encodeURIComponent(cursor)}`;
        const body = await (await tokendCall('/auth/sessions' + query, 'GET')).json();
        all.push(...body.sessions);
        cursor = body.next_cursor;
        if (cursor === null || cursor === undefined) break;
      }
      return all;
    },

    onChange(cb) {
      listeners.add(cb);
      return () => listeners.delete(cb);
    },

    async socialLoginUrl(provider, returnTo) {
      const verifier = base64url(cryptoApi.getRandomValues(new Uint8Array(32)));
      const digest = await cryptoApi.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
      if (session) session.setItem(pkceKey, verifier);
      const query = new URLSearchParams({
        return_to: returnTo,
        code_challenge: base64url(new Uint8Array(digest)),
        code_challenge_method: 'S256',
      });
      return `${baseUrl}/auth/oidc/${encodeURIComponent(provider)}/login?${query}`;
    },

    async completeSocialLogin(search = g.location ? g.location.search : '') {
      const params = new URLSearchParams(search);
      if (params.has('error')) throw new TokendError(400, params.get('error'), params.get('error_description') || '');
      const code = params.get('login_code');
      if (!code) return false;
      const verifier = session && session.getItem(pkceKey);
      if (session) session.removeItem(pkceKey);
      if (!verifier) throw new TokendError(400, 'invalid_grant', 'no code_verifier kept in this tab');
      await client.exchange(code, verifier);
      return true;
    },

    /** Stop listening to other tabs (the client keeps working within this tab). */
    close() {
      if (channel) channel.close();
      if (storage && events && events.removeEventListener) events.removeEventListener('storage', onStorage);
    },
  };
  return client;
}
