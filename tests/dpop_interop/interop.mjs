// DPoP against an independent client: panva's oauth4webapi (pinned in package.json) obtains a
// DPoP-bound token from tokend's /oauth/token (password grant), calls /auth/me with it,
// refreshes it, and tries the refresh token without a proof. tokend runs with
// TOKEND_DPOP_NONCE=true, so the client meets use_dpop_nonce and retries with the nonce.
//
// Run by tests/test_dpop_interop.py: node interop.mjs '<config JSON>'; prints one line
// {"result": {...}} for the test to assert on (and exits non-zero on an unexpected error).
import * as oauth from 'oauth4webapi'

const config = JSON.parse(process.argv[2])
const issuer = new URL(config.issuer)
const insecure = { [oauth.allowInsecureRequests]: true } // tokend on http://127.0.0.1
const client = { client_id: config.client_id }
const none = oauth.None()
const retries = { token: 0, me: 0, refresh: 0 }

// The retry oauth4webapi leaves to its caller: once, with the nonce the handle cached.
async function withNonce(kind, attempt) {
  try {
    return await attempt()
  } catch (err) {
    if (!oauth.isDPoPNonceError(err)) throw err
    retries[kind] += 1
    return await attempt()
  }
}

async function me(accessToken, dpop) {
  const response = await withNonce('me', () =>
    oauth.protectedResourceRequest(accessToken, 'GET', new URL('/auth/me', issuer), undefined, undefined, {
      DPoP: dpop,
      ...insecure,
    }),
  )
  return { status: response.status, body: await response.json() }
}

const as = await oauth.processDiscoveryResponse(
  issuer,
  await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }),
)
const keyPair = await oauth.generateKeyPair('ES256')
const dpop = oauth.DPoP(client, keyPair)

const tokens = await withNonce('token', async () =>
  oauth.processGenericTokenEndpointResponse(
    as,
    client,
    await oauth.genericTokenEndpointRequest(
      as,
      client,
      none,
      'password',
      { username: config.username, password: config.password },
      { DPoP: dpop, ...insecure },
    ),
  ),
)
const first = await me(tokens.access_token, dpop)

// A new handle for the same key: a client restarted with its key and no nonce yet, so the
// refresh itself meets use_dpop_nonce.
const restarted = oauth.DPoP(client, keyPair)
const refreshed = await withNonce('refresh', async () =>
  oauth.processRefreshTokenResponse(
    as,
    client,
    await oauth.refreshTokenGrantRequest(as, client, none, tokens.refresh_token, { DPoP: restarted, ...insecure }),
  ),
)
const second = await me(refreshed.access_token, restarted)
// And a resource call from a handle without a nonce: tokend's 401 challenge
// (WWW-Authenticate: Bearer ..., DPoP ... error="use_dpop_nonce") as oauth4webapi reads it.
const third = await me(refreshed.access_token, oauth.DPoP(client, keyPair))

// The refresh token as a thief has it: no key, no proof.
let stolen = null
try {
  await oauth.processRefreshTokenResponse(
    as,
    client,
    await oauth.refreshTokenGrantRequest(as, client, none, refreshed.refresh_token, insecure),
  )
} catch (err) {
  if (!(err instanceof oauth.ResponseBodyError)) throw err
  stolen = { status: err.status, error: err.error }
}

console.log(
  JSON.stringify({
    result: {
      dpop_algs: as.dpop_signing_alg_values_supported,
      jkt: await dpop.calculateThumbprint(),
      token_type: tokens.token_type,
      access_token: tokens.access_token,
      refresh_token: tokens.refresh_token,
      me: first,
      refreshed_token_type: refreshed.token_type,
      refreshed_access_token: refreshed.access_token,
      me_after_refresh: second,
      me_without_nonce: third,
      stolen_refresh: stolen,
      retries,
    },
  }),
)
