// The login page (/login): password login, social login with PKCE, then on to return_to.
// Nothing here is inline in the page: the config is the JSON block #tokend-config.
import { createTokendClient } from '/static/tokend-client.js';

const config = JSON.parse(document.getElementById('tokend-config').textContent);
const strings = config.strings || {};
const RETURN_KEY = 'tokend-login-return-to';
const DEFAULT_TARGET = '/account';

/** The page's message `key` in its language, with {name} placeholders filled in. */
function t(key, vars = {}) {
  let text = strings[key] ?? key;
  for (const [name, value] of Object.entries(vars)) text = text.split(`{${name}}`).join(String(value));
  return text;
}

const form = document.getElementById('login-form');
const errorBox = document.getElementById('login-error');
const statusBox = document.getElementById('login-status');
const providerButtons = [...document.querySelectorAll('button[data-provider]')];

/**
 * Where the browser may go after the login: a path on this origin (one leading '/',
 * no '//' or backslash, printable ASCII only) or a URL of exactly an allowed origin.
 * The server checked it already; this is the second check. Anything else: null.
 */
function safeTarget(value) {
  if (typeof value !== 'string' || !value || value.length > 2048) return null;
  if (value.startsWith('/')) {
    if (!/^\/(?![/\\])[\x21-\x7e]*$/.test(value) || value.includes('\\')) return null;
    return value.startsWith('/login') ? DEFAULT_TARGET : value;
  }
  let url;
  try {
    url = new URL(value);
  } catch {
    return null;
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return null;
  if (url.username || url.password) return null;
  const origins = [location.origin, ...(config.allowedOrigins || [])];
  if (!origins.includes(url.origin)) return null;
  if (url.origin === location.origin && url.pathname.startsWith('/login')) return DEFAULT_TARGET;
  return url.href;
}

const destination = () => safeTarget(config.returnTo) || DEFAULT_TARGET;

/** A language asked for with ?lang= goes on to tokend's own next page (not elsewhere). */
function withLang(target) {
  const asked = new URLSearchParams(location.search).get('lang');
  const url = new URL(target, location.origin);
  if (!asked || url.origin !== location.origin || url.searchParams.has('lang')) return target;
  url.searchParams.set('lang', asked);
  return url.pathname + url.search + url.hash;
}

function goOn(target) {
  location.replace(withLang(safeTarget(target) || DEFAULT_TARGET));
}

function showError(message) {
  statusBox.textContent = '';
  errorBox.textContent = message;
}

function showStatus(message) {
  errorBox.textContent = '';
  statusBox.textContent = message;
}

function setBusy(busy) {
  for (const el of form.querySelectorAll('input, button')) el.disabled = busy;
  for (const button of providerButtons) button.disabled = busy;
  form.setAttribute('aria-busy', busy ? 'true' : 'false');
}

function retrySeconds(value) {
  const n = Number(value);
  return Number.isFinite(n) && n > 0 ? Math.ceil(n) : null;
}

/** The message for a failed password login (a TokendError, or a network failure). */
function loginMessage(err) {
  const status = err && typeof err.status === 'number' ? err.status : 0;
  if (!status) return t('err_network');
  if (status === 401 || (status === 400 && err.error === 'invalid_grant')) return t('err_credentials');
  if (status === 429) {
    const n = retrySeconds(err.retryAfter);
    return n ? t('err_rate_limited', { n }) : t('err_rate_limited_later');
  }
  if (status >= 500) return t('err_unavailable');
  if (status === 400 && err.description) return t('err_invalid', { detail: err.description });
  return t('err_generic');
}

/** The message for a social login that came back with ?error= (the OAuth code only:
 * error_description in the URL is anyone's text and is never shown). */
function providerMessage(code) {
  if (code === 'temporarily_unavailable' || code === 'server_error') return t('err_provider_down');
  if (
    ['access_denied', 'login_required', 'consent_required', 'interaction_required'].includes(code)
  ) {
    return t('err_provider_denied');
  }
  return t('err_provider_failed');
}

/** The message for a failed login_code exchange. */
function exchangeMessage(err) {
  const status = err && typeof err.status === 'number' ? err.status : 0;
  if (status === 400 && err.error === 'invalid_grant') return t('err_social_expired');
  if (status === 502 || status === 503) return t('err_provider_down');
  return loginMessage(err);
}

/** This page's URL without the one-time parameters of a social login's return. */
function cleanUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of ['login_code', 'error', 'error_description', 'state', 'iss']) params.delete(name);
  const query = params.toString();
  return location.pathname + (query ? `?${query}` : '');
}

const clientOptions = { cookie: Boolean(config.cookie), onLoginRequired: () => {} };
if (!config.cookie) clientOptions.storage = window.localStorage;
const client = createTokendClient(clientOptions);

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  const username = form.elements.username.value;
  const password = form.elements.password.value;
  if (!username || !password) {
    form.reportValidity();
    return;
  }
  setBusy(true);
  showStatus(t('working'));
  try {
    await client.login(username, password);
  } catch (err) {
    setBusy(false);
    showError(loginMessage(err));
    form.elements.password.value = '';
    form.elements.password.focus();
    return;
  }
  goOn(destination());
});

/** Social login: tokend sends the browser to the provider and back to this page with a
 * login_code, which only this tab's PKCE verifier (sessionStorage) redeems. A probe
 * first, so that a provider tokend cannot reach is an error here, not a JSON page. */
async function startSocial(provider) {
  setBusy(true);
  showStatus(t('working'));
  try {
    const url = await client.socialLoginUrl(provider, `${location.origin}/login`);
    const probe = await fetch(url, { redirect: 'manual', credentials: 'same-origin' });
    if (probe.type !== 'opaqueredirect' && !probe.ok) {
      const body = await probe.json().catch(() => ({}));
      const err = {
        status: probe.status,
        error: body.error,
        description: body.error_description,
        retryAfter: probe.headers.get('Retry-After'),
      };
      throw err;
    }
    sessionStorage.setItem(RETURN_KEY, destination());
    // A new flow: the probe's state is never used and expires on its own.
    location.assign(await client.socialLoginUrl(provider, `${location.origin}/login`));
  } catch (err) {
    setBusy(false);
    const status = err && typeof err.status === 'number' ? err.status : 0;
    showError(status === 502 || status === 503 ? t('err_provider_down') : loginMessage(err));
  }
}

for (const button of providerButtons) {
  button.addEventListener('click', () => startSocial(button.dataset.provider));
}

async function start() {
  const params = new URLSearchParams(location.search);
  if (params.get('flow') === 'link') {
    // The return of a link flow started on /account: the account page confirms it.
    params.delete('flow');
    location.replace(`/account?${params}`);
    return;
  }
  if (params.has('error')) {
    history.replaceState(null, '', cleanUrl());
    sessionStorage.removeItem(RETURN_KEY);
    showError(providerMessage(params.get('error')));
    return;
  }
  if (params.has('login_code')) {
    const target = sessionStorage.getItem(RETURN_KEY);
    sessionStorage.removeItem(RETURN_KEY);
    history.replaceState(null, '', cleanUrl());
    setBusy(true);
    showStatus(t('working'));
    try {
      await client.completeSocialLogin(`?login_code=${encodeURIComponent(params.get('login_code'))}`);
    } catch (err) {
      setBusy(false);
      showError(exchangeMessage(err));
      return;
    }
    goOn(target || DEFAULT_TARGET);
    return;
  }
  // Already signed in (a token in this browser, or tokend's cookie): straight on.
  const token = await client.accessToken().catch(() => null);
  if (token) goOn(destination());
}

start();
