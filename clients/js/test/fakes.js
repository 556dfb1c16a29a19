// Fakes for the client's tests: a manual clock, a tokend server behind fetch (rotation,
// grace, reuse), Web Locks, BroadcastChannel and localStorage shared by simulated tabs.
import { createTokendClient } from '../src/tokend-client.js';

export const BASE = 'http://tokend.test';

/** now/setTimeout/clearTimeout that move only when a test drives them. */
export class FakeClock {
  constructor(start = 1_700_000_000_000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.now = () => this.t;
    this.setTimeout = (fn, ms = 0) => {
      const id = ++this.seq;
      this.timers.set(id, { id, at: this.t + Math.max(0, ms), fn });
      return id;
    };
    this.clearTimeout = (id) => this.timers.delete(id);
  }

  next() {
    let best = null;
    for (const t of this.timers.values()) if (!best || t.at < best.at) best = t;
    return best;
  }

  /** Let every pending promise, fake message and fake response run (no time passes). */
  async flush() {
    for (let i = 0; i < 40; i++) await new Promise((r) => setImmediate(r));
  }

  /** Move time forward by ms, firing the timers that fall due in order. */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await this.flush();
      const n = this.next();
      if (!n || n.at > end) break;
      this.t = n.at;
      this.timers.delete(n.id);
      n.fn();
    }
    this.t = end;
    await this.flush();
  }

  /** Drive time until promise settles (firing timers as needed); its value or error. */
  async settle(promise, maxMs = 3_600_000) {
    let state = 'pending';
    let result;
    promise.then(
      (v) => ((state = 'ok'), (result = v)),
      (e) => ((state = 'err'), (result = e)),
    );
    const end = this.t + maxMs;
    for (;;) {
      await this.flush();
      if (state !== 'pending') break;
      const n = this.next();
      if (!n || n.at > end) throw new Error('stuck: the promise waits and no timer is due');
      this.t = n.at;
      this.timers.delete(n.id);
      n.fn();
    }
    if (state === 'err') throw result;
    return result;
  }
}

/** One browser's localStorage: a shared map, one view (and event target) per tab. */
// With lag, a tab sees another tab's write only a moment later (as with a browser whose
// tabs run in separate processes), so two tabs can both find a key free and both write it;
// then all of them converge on the last write.
export class StorageArea {
  constructor({ lag = false, delay = 0, clock = null } = {}) {
    this.map = new Map();
    this.views = new Set();
    this.writes = [];
    this.lag = lag || delay > 0;
    this.delay = delay; // with a clock: other tabs see a write this many fake ms later
    this.clock = clock;
  }

  view() {
    const area = this;
    const view = new EventTarget();
    view.cache = new Map(this.map);
    const seen = () => (area.lag ? view.cache : area.map);
    Object.assign(view, {
      getItem: (k) => (seen().has(k) ? seen().get(k) : null),
      setItem: (k, v) => area.write(view, k, String(v)),
      removeItem: (k) => area.write(view, k, null),
    });
    this.views.add(view);
    return view;
  }

  write(from, key, value) {
    const oldValue = this.map.has(key) ? this.map.get(key) : null;
    const put = (m) => (value === null ? m.delete(key) : m.set(key, value));
    put(this.map);
    put(from.cache); // the writer sees its own write at once
    this.writes.push({ key, value });
    const later = (f) => (this.delay ? this.clock.setTimeout(f, this.delay) : setImmediate(f));
    for (const v of this.views) {
      later(() => {
        // Every tab converges on the browser's order of the writes (the writer too).
        if (this.map.has(key)) v.cache.set(key, this.map.get(key));
        else v.cache.delete(key);
        if (v === from) return; // like browsers: other tabs hear of it, not the writer
        const e = new Event('storage');
        Object.assign(e, { key, oldValue, newValue: value });
        v.dispatchEvent(e);
      });
    }
  }
}

/** navigator.locks for a browser: exclusive, FIFO per name. */
export class FakeLocks {
  constructor() {
    this.tails = new Map();
    this.held = 0;
    this.maxHeld = 0;
    this.requests = [];
  }

  request(name, options, callback) {
    const cb = typeof options === 'function' ? options : callback;
    this.requests.push(name);
    const before = this.tails.get(name) || Promise.resolve();
    const run = before.then(async () => {
      this.held++;
      this.maxHeld = Math.max(this.maxHeld, this.held);
      try {
        return await cb({ name, mode: 'exclusive' });
      } finally {
        this.held--;
      }
    });
    this.tails.set(name, run.catch(() => {}));
    return run;
  }
}

/** A BroadcastChannel class whose instances talk over one in-process bus. */
export function channelBus() {
  const open = new Set();
  const log = [];
  class FakeBroadcastChannel {
    constructor(name) {
      this.name = name;
      this.onmessage = null;
      open.add(this);
    }
    postMessage(data) {
      log.push({ name: this.name, data });
      const copy = structuredClone(data);
      for (const ch of open) {
        if (ch === this || ch.name !== this.name) continue;
        setImmediate(() => open.has(ch) && ch.onmessage && ch.onmessage({ data: copy }));
      }
    }
    close() {
      open.delete(this);
    }
  }
  return { Channel: FakeBroadcastChannel, log };
}

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');

/**
 * tokend behind fetch: login, refresh with rotation (the previous token gets the same
 * successor within the grace, anything older is reuse and ends the session), logout*,
 * sessions, and a protected GET /api/me. In cookie mode the refresh token lives in `jar`.
 */
export class FakeServer {
  constructor(clock, { cookie = false, accessTtl = 300, grace = 10, pageSize = 50, latency = 10 } = {}) {
    Object.assign(this, { clock, cookie, accessTtl, grace, pageSize, latency });
    this.users = { alice: 'pw' };
    this.sessions = new Map();
    this.refreshOwner = new Map(); // every refresh token ever issued → sid
    this.accessOwner = new Map(); // access token → {sid, exp}
    this.jar = null; // the browser's __Host-tokend-refresh cookie
    this.n = 0;
    this.requests = [];
    this.counts = { login: 0, refresh: 0, rotated: 0, grace: 0, reuse: 0, api: 0 };
    this.refreshFaults = []; // 'network' | 'lost' | {status, retryAfter}
    this.rejectApi = 0; // answer this many API calls 401 invalid_token whatever the token
    this.fetch = (url, init = {}) => this.handle(url, init);
  }

  issue(sid) {
    const s = this.sessions.get(sid);
    const now = Math.floor(this.clock.now() / 1000);
    const n = ++this.n;
    const access = `${b64({ alg: 'none' })}.${b64({ sub: s.user, sid, iat: now, exp: now + this.accessTtl, n })}.sig`;
    const refresh = `r${n}-${sid}`;
    this.accessOwner.set(access, { sid, exp: (now + this.accessTtl) * 1000 });
    this.refreshOwner.set(refresh, sid);
    s.current = refresh;
    const body = { access_token: access, token_type: 'Bearer', expires_in: this.accessTtl, refresh_expires_in: 86400 };
    if (!this.cookie) body.refresh_token = refresh;
    return { body, refresh };
  }

  startSession(user) {
    const sid = `s${this.sessions.size + 1}`;
    this.sessions.set(sid, { sid, user, alive: true, current: null, previous: null, previousAt: 0, successor: null });
    return this.issue(sid);
  }

  async handle(url, init) {
    const u = new URL(url, BASE);
    const headers = new Headers(init.headers);
    const req = { method: init.method || 'GET', path: u.pathname + u.search, headers, credentials: init.credentials };
    this.requests.push(req);
    await new Promise((r) => this.clock.setTimeout(r, this.latency)); // the network takes time
    const body = init.body ? JSON.parse(init.body) : null;
    const route = `${req.method} ${u.pathname}`;
    if (route === 'POST /auth/login') return this.login(body, init);
    if (route === 'POST /auth/oidc/exchange') return this.tokens(this.startSession('alice'), init);
    if (route === 'POST /auth/refresh') return this.refresh(headers, init);
    if (u.pathname.startsWith('/api/')) return this.api(headers);
    const principal = this.principal(headers);
    if (route === 'POST /auth/logout' && !principal && this.cookie && this.jar && init.credentials === 'include') {
      this.kill(this.refreshOwner.get(this.jar));
      this.jar = null;
      return new Response(null, { status: 204 });
    }
    if (!principal) return this.invalidToken();
    const mine = [...this.sessions.values()].filter((s) => s.alive && s.user === principal.user);
    if (route === 'POST /auth/logout') {
      this.kill(principal.sid);
      if (this.cookie && init.credentials === 'include') this.jar = null;
      return new Response(null, { status: 204 });
    }
    if (route === 'POST /auth/logout-all') mine.forEach((s) => this.kill(s.sid));
    else if (route === 'POST /auth/logout-others') mine.filter((s) => s.sid !== principal.sid).forEach((s) => this.kill(s.sid));
    else if (route === 'GET /auth/sessions') {
      const from = Number(u.searchParams.get('cursor') || 0);
      const page = mine.slice(from, from + this.pageSize);
      const next = from + this.pageSize < mine.length ? String(from + this.pageSize) : null;
      const sessions = page.map((s) => ({ id: s.sid, current: s.sid === principal.sid }));
      return Response.json({ sessions, next_cursor: next });
    } else return Response.json({ error: 'not_found', error_description: route }, { status: 404 });
    return new Response(null, { status: 204 });
  }

  tokens({ body, refresh }, init) {
    if (this.cookie && init.credentials === 'include') this.jar = refresh;
    return Response.json(body, { headers: { 'Cache-Control': 'no-store' } });
  }

  login(body, init) {
    this.counts.login++;
    if (!body || this.users[body.username] !== body.password) {
      return Response.json({ error: 'invalid_grant', error_description: 'bad credentials' }, { status: 401 });
    }
    return this.tokens(this.startSession(body.username), init);
  }

  refresh(headers, init) {
    this.counts.refresh++;
    const fault = this.refreshFaults.shift();
    if (fault === 'network') return Promise.reject(new TypeError('fetch failed'));
    if (fault && fault.status) {
      const h = fault.retryAfter != null ? { 'Retry-After': String(fault.retryAfter) } : {};
      return Response.json({ error: 'temporarily_unavailable', error_description: 'busy' }, { status: fault.status, headers: h });
    }
    let token = (headers.get('Authorization') || '').replace(/^Bearer /, '') || null;
    if (this.cookie && !token) {
      if (init.credentials !== 'include' || !headers.get('X-Tokend-CSRF')) {
        return Response.json({ error: 'forbidden', error_description: 'csrf' }, { status: 403 });
      }
      token = this.jar;
    }
    if (!token) return Response.json({ error: 'invalid_request', error_description: 'missing refresh token' }, { status: 400 });
    const s = this.sessions.get(this.refreshOwner.get(token));
    if (!s || !s.alive) return this.invalidToken();
    let answer;
    if (token === s.current) {
      this.counts.rotated++;
      s.previous = token;
      s.previousAt = this.clock.now();
      s.successor = this.issue(s.sid);
      answer = s.successor;
    } else if (token === s.previous && this.clock.now() - s.previousAt < this.grace * 1000) {
      this.counts.grace++;
      answer = s.successor;
    } else {
      this.counts.reuse++;
      this.kill(s.sid);
      return this.invalidToken('refresh token reused');
    }
    const res = this.tokens(answer, init);
    if (fault === 'lost') return Promise.reject(new TypeError('connection reset')); // done, answer lost
    return res;
  }

  principal(headers) {
    const token = (headers.get('Authorization') || '').replace(/^Bearer /, '');
    const a = this.accessOwner.get(token);
    const s = a && this.sessions.get(a.sid);
    return a && s.alive && a.exp > this.clock.now() ? { sid: s.sid, user: s.user } : null;
  }

  api(headers) {
    this.counts.api++;
    if (this.rejectApi > 0) {
      this.rejectApi--;
      return this.invalidToken();
    }
    const p = this.principal(headers);
    return p ? Response.json({ sub: p.user, sid: p.sid }) : this.invalidToken();
  }

  invalidToken(description = 'expired or revoked') {
    return Response.json(
      { error: 'invalid_token', error_description: description },
      { status: 401, headers: { 'WWW-Authenticate': `Bearer realm="tokend", error="invalid_token", error_description="${description}"` } },
    );
  }

  kill(sid) {
    const s = sid && this.sessions.get(sid);
    if (s) s.alive = false;
  }

  alive() {
    return [...this.sessions.values()].filter((s) => s.alive).length;
  }
}

/** One browser: a clock, tokend, and what tabs share (storage, locks, channels). */
export function browser({ cookie = false, locks = true, channels = true, lag = false, storageDelay = 0, ...serverOptions } = {}) {
  const clock = new FakeClock();
  const server = new FakeServer(clock, { cookie, ...serverOptions });
  const area = new StorageArea({ lag, delay: storageDelay, clock });
  const lockManager = locks ? new FakeLocks() : null;
  const bus = channelBus();
  let seed = 1;
  const tab = (extra = {}) => {
    const storage = area.view();
    let r = seed++ * 7919;
    const t = { loginRequired: 0, changes: [], storage };
    t.client = createTokendClient({
      baseUrl: BASE,
      cookie,
      storage,
      storageEvents: storage,
      fetch: server.fetch,
      locks: lockManager,
      BroadcastChannel: channels ? bus.Channel : null,
      now: clock.now,
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      random: () => ((r = (r * 48271) % 2147483647) / 2147483647),
      sessionStorage: new StorageArea().view(),
      onLoginRequired: () => t.loginRequired++,
      ...extra,
    });
    t.client.onChange((e) => t.changes.push(e));
    return t;
  };
  return { clock, server, area, locks: lockManager, bus, tab };
}
