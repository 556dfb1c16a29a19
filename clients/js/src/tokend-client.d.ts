// Types of tokend-client.js (keep in step with it).

/** An error answer from tokend (status 0: tokend could not be reached). */
export class TokendError extends Error {
  constructor(status: number, error: string, description?: string, retryAfter?: number | null);
  readonly name: 'TokendError';
  /** HTTP status; 0 when no answer arrived. */
  status: number;
  /** OAuth error code: "invalid_grant", "invalid_token", "slow_down", "login_required",
   * "temporarily_unavailable" (refresh retries exhausted; tokens kept), "network_error", ... */
  error: string;
  description: string;
  /** Seconds from Retry-After (429, 503), or null. */
  retryAfter: number | null;
}

/** Minimal Web Storage (localStorage, sessionStorage). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** navigator.locks, or something that behaves like its exclusive request(). */
export interface LocksLike {
  request<T>(name: string, callback: (lock: unknown) => Promise<T> | T): Promise<T>;
}

export interface BroadcastChannelLike {
  postMessage(message: unknown): void;
  onmessage: ((event: { data: any }) => void) | null;
  close(): void;
}

export interface TokendClientOptions {
  /** tokend's URL, e.g. "https://auth.example.com"; "" or omitted: same origin. */
  baseUrl?: string;
  /** The refresh token is tokend's HttpOnly cookie (TOKEND_REFRESH_COOKIE=true); the access
   * token stays in memory; requests to tokend use credentials:'include' + X-Tokend-CSRF: 1. */
  cookie?: boolean;
  /** Storage mode: where both tokens live, shared by tabs (default localStorage). Ignored for
   * tokens in cookie mode (used only for the lease lock when Web Locks are missing).
   * null: tokens in memory only. */
  storage?: StorageLike | null;
  /** DPoP (RFC 9449): a non-extractable ECDSA P-256 key, kept in IndexedDB per baseUrl (it
   * survives reloads), signs a proof on login, refresh and exchange; a bound token goes out as
   * `Authorization: DPoP <token>` with a proof (ath) on every call. DPoP-Nonce is kept per
   * origin; an answer asking for a nonce (use_dpop_nonce) is repeated once with it. */
  dpop?: boolean;
  /** Where the DPoP key pair is kept (default the browser's indexedDB; null: in memory, one
   * key per page load). */
  indexedDB?: IDBFactory | null;
  /** Called once when the session is over (refresh refused, or no session at all). */
  onLoginRequired?: () => void;
  // Injectable for tests (defaults: the browser's own).
  fetch?: typeof fetch;
  /** Default navigator.locks; null: lease lock in storage, or in-tab single flight only. */
  locks?: LocksLike | null;
  BroadcastChannel?: (new (name: string) => BroadcastChannelLike) | null;
  now?: () => number;
  setTimeout?: (fn: () => void, ms: number) => unknown;
  clearTimeout?: (id: any) => void;
  random?: () => number;
  crypto?: Crypto;
  /** Where socialLoginUrl keeps the PKCE code_verifier (default sessionStorage). */
  sessionStorage?: StorageLike | null;
  /** Target of 'storage' events from other tabs (default window). */
  storageEvents?: EventTarget | null;
  /** Refresh retries after a network error, 429 or 5xx (default 5). */
  maxRetries?: number;
  /** First retry delay in ms, doubled per attempt (default 1000), at most maxRetryDelay
   * (default 30000); Retry-After wins. */
  retryDelay?: number;
  maxRetryDelay?: number;
  /** Cookie mode: ms a tab without a token waits for another tab to share one (default 50). */
  shareWait?: number;
}

export interface ChangeEvent {
  loggedIn: boolean;
  reason: 'login' | 'refresh' | 'logout';
}

/** One entry of GET /auth/sessions. */
export interface Session {
  id: string;
  created: number;
  last_used: number;
  expires: number;
  user_agent: string;
  ip: string;
  client_id: string | null;
  current: boolean;
  [key: string]: unknown;
}

export interface TokendClient {
  /** POST /auth/login; throws TokendError (401 invalid_grant, 429 with retryAfter, ...). */
  login(username: string, password: string): Promise<void>;
  /** POST /auth/oidc/exchange: a social login's login_code and its PKCE code_verifier. */
  exchange(loginCode: string, codeVerifier: string): Promise<void>;
  /** fetch with `Authorization: Bearer <access>` (a DPoP-bound token: `DPoP <access>` and a
   * `DPoP` proof header) added (nothing else changed: no credentials are added); refreshes ahead of expiry, and on a 401 whose WWW-Authenticate says
   * invalid_token refreshes and repeats once (a body must be re-sendable: string, Blob,
   * FormData, ...). Rejects with TokendError "login_required" when there is no session
   * (after onLoginRequired). */
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  /** POST /auth/logout (cookie mode without an access token: by the cookie); the tokens are
   * cleared here and in every tab even if tokend could not be told (then it rethrows). */
  logout(): Promise<void>;
  /** POST /auth/logout-others: every other session of the user ends; this one stays. */
  logoutOthers(): Promise<void>;
  /** POST /auth/logout-all, then logged out here and in every tab. */
  logoutAll(): Promise<void>;
  /** GET /auth/sessions, every page (next_cursor followed). */
  sessions(): Promise<Session[]>;
  /** A valid access token, refreshed when due (in cookie mode a new tab refreshes by the
   * cookie unless another tab shares its token); null when logged out. Rejects with
   * TokendError "temporarily_unavailable" when tokend cannot be reached (still logged in). */
  accessToken(): Promise<string | null>;
  /** Whether tokens are held (cookie mode, new tab: false until accessToken() resolves). */
  readonly loggedIn: boolean;
  /** Login, refresh and logout, in this tab and the others; returns an unsubscribe. */
  onChange(callback: (event: ChangeEvent) => void): () => void;
  /** The URL that starts a social login, to navigate to: tokend's
   * /auth/oidc/<provider>/login?return_to=...&code_challenge=...&code_challenge_method=S256.
   * The code_verifier is kept in sessionStorage for completeSocialLogin. */
  socialLoginUrl(provider: string, returnTo: string): Promise<string>;
  /** On the return_to page: exchanges ?login_code= with the kept verifier; false when the
   * query has no login_code; throws TokendError for ?error=... or a missing verifier. */
  completeSocialLogin(locationSearch?: string): Promise<boolean>;
  /** Stop listening to other tabs. */
  close(): void;
}

export function createTokendClient(options?: TokendClientOptions): TokendClient;
