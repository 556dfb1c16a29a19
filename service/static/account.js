// The account page (/account): sessions, sign out (one, others, everywhere), password,
// linked accounts. It reloads the session list every second while visible, so a session
// ended elsewhere sends this page to the login form within two seconds.
import { createTokendClient } from '/static/tokend-client.js';

const config = JSON.parse(document.getElementById('tokend-config').textContent);
const strings = config.strings || {};
const lang = config.lang || document.documentElement.lang || 'en';
const POLL_MS = 1000;

/** The page's message `key` in its language, with {name} placeholders filled in. */
function t(key, vars = {}) {
  let text = strings[key] ?? key;
  for (const [name, value] of Object.entries(vars)) text = text.split(`{${name}}`).join(String(value));
  return text;
}

const $ = (id) => document.getElementById(id);
const errorBox = $('account-error');
const statusBox = $('account-status');
const sessionList = $('sessions');
const identityList = $('identities');
const passwordForm = $('password-form');
const dateFormat = new Intl.DateTimeFormat(lang, { dateStyle: 'medium', timeStyle: 'short' });

let leaving = false;
let pollTimer = null;

/** To the login form, which comes back here after the login. */
function toLogin() {
  if (leaving) return;
  leaving = true;
  clearInterval(pollTimer);
  const query = new URLSearchParams({ return_to: '/account' });
  const asked = new URLSearchParams(location.search).get('lang');
  if (asked) query.set('lang', asked);
  location.replace(`/login?${query}`);
}

const clientOptions = { cookie: Boolean(config.cookie), onLoginRequired: toLogin };
if (!config.cookie) clientOptions.storage = window.localStorage;
const client = createTokendClient(clientOptions);

function say(box, message) {
  for (const other of [errorBox, statusBox]) if (other !== box) other.textContent = '';
  box.textContent = message;
}

/** An error as {status, error, description, retryAfter}; status 0: no answer. */
async function failureOf(response) {
  const body = await response.json().catch(() => ({}));
  return {
    status: response.status,
    error: body.error,
    description: body.error_description || '',
    retryAfter: response.headers.get('Retry-After'),
  };
}

function messageOf(err) {
  const status = err && typeof err.status === 'number' ? err.status : 0;
  if (!status) return t('err_network');
  if (status === 429) {
    const n = Math.ceil(Number(err.retryAfter));
    return n > 0 ? t('err_rate_limited', { n }) : t('err_rate_limited_later');
  }
  if (status >= 500) return t('err_unavailable');
  if (status === 400 && err.description) return t('err_invalid', { detail: err.description });
  return t('err_generic');
}

/** An authenticated call through the client; a non-2xx answer throws its failure. A
 * 401 other than a wrong password (invalid_grant) means the session is gone. */
async function api(path, init = {}) {
  let response;
  try {
    response = await client.fetch(path, init);
  } catch (err) {
    if (err && err.status === 401) toLogin();
    throw err && typeof err.status === 'number' ? err : { status: 0 };
  }
  if (response.ok) return response;
  const failure = await failureOf(response);
  if (failure.status === 401 && failure.error !== 'invalid_grant') toLogin();
  throw failure;
}

function jsonInit(method, body) {
  return { method, headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body) };
}

// --- sessions -------------------------------------------------------------------------

/** "Chrome on Linux" from a User-Agent; a tiny parser, not a database. */
function device(userAgent) {
  const ua = userAgent || '';
  const browsers = [
    [/Edg(?:e|A|iOS)?\//, 'Edge'],
    [/OPR\/|Opera/, 'Opera'],
    [/SamsungBrowser\//, 'Samsung Internet'],
    [/Firefox\/|FxiOS\//, 'Firefox'],
    [/Chrome\/|CriOS\/|Chromium\//, 'Chrome'],
    [/Safari\//, 'Safari'], // after the others, whose user agents name Safari too
  ];
  const systems = [
    [/Windows/, 'Windows'],
    [/Android/, 'Android'],
    [/iPhone|iPad|iPod/, 'iOS'],
    [/CrOS/, 'ChromeOS'],
    [/Mac OS X|Macintosh/, 'macOS'],
    [/Linux/, 'Linux'],
  ];
  const browser = (browsers.find(([re]) => re.test(ua)) || [])[1];
  const os = (systems.find(([re]) => re.test(ua)) || [])[1];
  if (browser && os) return t('device_format', { browser, os });
  if (browser || os) return browser || os;
  const product = ua.split(/[\s/]/)[0];
  return product ? product.slice(0, 40) : t('unknown_device');
}

function when(seconds) {
  const date = new Date(Number(seconds) * 1000);
  const el = document.createElement('time');
  if (Number.isNaN(date.getTime())) return el;
  el.dateTime = date.toISOString();
  el.textContent = dateFormat.format(date);
  return el;
}

function meta(list, label, value) {
  const row = document.createElement('div');
  const dt = document.createElement('dt');
  const dd = document.createElement('dd');
  dt.textContent = label;
  if (value instanceof Node) dd.append(value);
  else dd.textContent = value || '—';
  row.append(dt, dd);
  list.append(row);
}

function sessionItem(session, index) {
  const li = document.createElement('li');
  li.dataset.sessionId = session.id;
  li.dataset.current = session.current ? 'true' : 'false';
  const info = document.createElement('div');
  info.className = 'session-info';
  const name = document.createElement('h3');
  name.id = `session-${index}`;
  name.textContent = device(session.user_agent);
  if (session.current) {
    const badge = document.createElement('span');
    badge.className = 'badge';
    badge.textContent = t('this_device');
    name.append(' ', badge);
  }
  const details = document.createElement('dl');
  details.className = 'session-meta';
  meta(details, t('ip_label'), session.ip);
  meta(details, t('created_label'), when(session.created));
  meta(details, t('last_used_label'), when(session.last_used));
  info.append(name, details);
  const button = document.createElement('button');
  button.type = 'button';
  button.dataset.action = 'sign-out-session';
  button.dataset.sessionId = session.id;
  button.setAttribute('aria-describedby', name.id);
  button.textContent = session.current ? t('sign_out_this') : t('sign_out_session');
  li.append(info, button);
  return li;
}

let shownSessions = '';

function renderSessions(sessions) {
  const key = JSON.stringify(sessions.map((s) => [s.id, s.current, s.user_agent, s.ip, s.created, s.last_used]));
  if (key === shownSessions) return; // unchanged: keep the DOM (and the focus) as it is
  shownSessions = key;
  const focused = document.activeElement && document.activeElement.closest('#sessions li');
  const focusId = focused ? focused.dataset.sessionId : null;
  const current = sessions.filter((s) => s.current);
  const others = sessions.filter((s) => !s.current);
  sessionList.replaceChildren(...[...current, ...others].map(sessionItem));
  if (focusId) {
    const again = sessionList.querySelector(`li[data-session-id="${CSS.escape(focusId)}"] button`);
    if (again) again.focus();
  }
  $('sign-out-others').disabled = others.length === 0;
}

let polling = false;
let pollFailed = false;

async function loadSessions() {
  if (polling || leaving) return;
  polling = true;
  try {
    const body = await (await api('/auth/sessions?limit=100')).json();
    renderSessions(body.sessions || []);
    if (pollFailed) errorBox.textContent = '';
    pollFailed = false;
  } catch (err) {
    if (!leaving && (!errorBox.textContent || pollFailed)) {
      errorBox.textContent = messageOf(err);
      pollFailed = true;
    }
  } finally {
    polling = false;
  }
}

function startPolling() {
  clearInterval(pollTimer);
  if (leaving || document.visibilityState !== 'visible') return;
  pollTimer = setInterval(loadSessions, POLL_MS);
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    loadSessions();
    startPolling();
  } else {
    clearInterval(pollTimer);
  }
});

async function run(action, done) {
  try {
    await action();
    if (done) say(statusBox, done);
  } catch (err) {
    if (!leaving) say(errorBox, messageOf(err));
  }
}

sessionList.addEventListener('click', (event) => {
  const button = event.target.closest('button[data-action="sign-out-session"]');
  if (!button) return;
  const item = button.closest('li');
  button.disabled = true;
  if (item.dataset.current === 'true') {
    run(async () => {
      await client.logout();
      toLogin();
    });
    return;
  }
  run(async () => {
    await api(`/auth/sessions/${encodeURIComponent(button.dataset.sessionId)}`, { method: 'DELETE' });
    await loadSessions();
  }, t('signed_out_session')).finally(() => {
    button.disabled = false;
  });
});

$('sign-out-others').addEventListener('click', () =>
  run(async () => {
    await client.logoutOthers();
    await loadSessions();
  }, t('signed_out_others')),
);

$('sign-out-everywhere').addEventListener('click', () =>
  run(async () => {
    await client.logoutAll();
    toLogin();
  }),
);

// --- password -------------------------------------------------------------------------

passwordForm.addEventListener('submit', async (event) => {
  event.preventDefault();
  const passwordError = $('password-error');
  const passwordStatus = $('password-status');
  passwordError.textContent = '';
  passwordStatus.textContent = '';
  const body = {
    current_password: passwordForm.elements.current_password.value,
    new_password: passwordForm.elements.new_password.value,
  };
  const submit = passwordForm.querySelector('button[type="submit"]');
  submit.disabled = true;
  try {
    const answer = await (await api('/auth/password', jsonInit('POST', body))).json();
    passwordForm.reset();
    passwordStatus.textContent = t('password_changed', { n: answer.revoked_sessions ?? 0 });
    await loadSessions();
  } catch (err) {
    if (leaving) return;
    if (err.status === 401 && err.error === 'invalid_grant') {
      passwordError.textContent = t('err_current_password');
      passwordForm.elements.current_password.focus();
    } else if (err.status === 400 && err.description) {
      passwordError.textContent = t('err_password_rejected', { detail: err.description });
      passwordForm.elements.new_password.focus();
    } else {
      passwordError.textContent = messageOf(err);
    }
  } finally {
    submit.disabled = false;
  }
});

// --- linked accounts ------------------------------------------------------------------

function identityItem(name, identity) {
  const li = document.createElement('li');
  li.dataset.provider = name;
  li.dataset.linked = identity ? 'true' : 'false';
  const info = document.createElement('div');
  const title = document.createElement('h3');
  title.textContent = name;
  const state = document.createElement('p');
  state.className = 'help';
  state.textContent = identity
    ? identity.email
      ? t('linked_as', { email: identity.email })
      : t('linked')
    : t('not_linked');
  info.append(title, state);
  const button = document.createElement('button');
  button.type = 'button';
  button.dataset.action = identity ? 'unlink' : 'link';
  button.dataset.provider = name;
  button.textContent = identity ? t('unlink', { name }) : t('link', { name });
  li.append(info, button);
  return li;
}

async function loadIdentities() {
  const body = await (await api('/auth/identities')).json();
  const linked = new Map((body.identities || []).map((i) => [i.provider, i]));
  const names = [...new Set([...(config.providers || []), ...linked.keys()])];
  if (!names.length) {
    const li = document.createElement('li');
    li.textContent = t('no_providers');
    identityList.replaceChildren(li);
    return;
  }
  identityList.replaceChildren(...names.map((name) => identityItem(name, linked.get(name))));
}

identityList.addEventListener('click', async (event) => {
  const button = event.target.closest('button[data-action][data-provider]');
  if (!button) return;
  const name = button.dataset.provider;
  const box = $('identities-error');
  box.textContent = '';
  button.disabled = true;
  try {
    if (button.dataset.action === 'unlink') {
      await api(`/auth/identities/${encodeURIComponent(name)}`, { method: 'DELETE' });
      await loadIdentities();
      say(statusBox, t('unlinked_ok', { name }));
      return;
    }
    // The link flow comes back to /login?flow=link (always an allowed return_to),
    // which hands link_code or error on to this page.
    const path = `/auth/oidc/${encodeURIComponent(name)}/link`;
    const answer = await (await api(path, jsonInit('POST', { return_to: `${location.origin}/login?flow=link` }))).json();
    const target = new URL(answer.authorization_url, location.href);
    if (target.protocol !== 'https:' && target.protocol !== 'http:') throw { status: 500 };
    location.assign(target.href); // a top-level navigation, as link/start requires
  } catch (err) {
    if (leaving) return;
    box.textContent = err.status === 409 ? t('err_unlink_last') : messageOf(err);
    button.disabled = false;
  }
});

/** Back from a link flow: confirm its link_code with this session, or show its error. */
async function finishLink(params) {
  const code = params.get('link_code');
  const failed = params.get('error');
  if (!code && !failed) return;
  history.replaceState(null, '', location.pathname + (params.get('lang') ? `?lang=${encodeURIComponent(params.get('lang'))}` : ''));
  if (failed) {
    $('identities-error').textContent = t('err_link_failed');
    return;
  }
  try {
    const answer = await (await api('/auth/oidc/link/confirm', jsonInit('POST', { link_code: code }))).json();
    say(statusBox, t('linked_ok', { name: (answer.linked && answer.linked.provider) || '' }));
  } catch (err) {
    if (!leaving) $('identities-error').textContent = t('err_link_failed');
  }
}

async function start() {
  const token = await client.accessToken().catch(() => null);
  if (!token) {
    toLogin();
    return;
  }
  statusBox.textContent = '';
  const params = new URLSearchParams(location.search);
  await finishLink(params);
  try {
    const me = await (await api('/auth/me')).json();
    $('whoami').textContent = t('signed_in_as', { name: me.username });
    $('account-username').value = me.username; // for password managers
  } catch (err) {
    if (!leaving) say(errorBox, messageOf(err));
  }
  await Promise.all([loadSessions(), loadIdentities().catch((err) => {
    if (!leaving) $('identities-error').textContent = messageOf(err);
  })]);
  startPolling();
}

start();
