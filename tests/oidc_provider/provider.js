// A real OpenID Provider for tokend's social-login tests: panva's oidc-provider with its
// development login and consent pages, one confidential client for tokend, PKCE required.
//
//   node provider.js PORT
//
// Environment:
//   OIDC_REDIRECT_URI   tokend's callback URL (required; comma-separated for several)
//   OIDC_CLIENT_ID      default "tokend"
//   OIDC_CLIENT_SECRET  default "tokend-test-secret"
//   OIDC_ID_TOKEN_ALG   RS256 | ES256 | EdDSA (default RS256): the ID token signing algorithm
//   OIDC_AUTH_METHOD    client_secret_basic | client_secret_post (default client_secret_basic):
//                       the only token endpoint auth method the provider announces
//   OIDC_BACKCHANNEL_LOGOUT_URI  tokend's back-channel logout endpoint (default: the first
//                       redirect URI with /callback replaced by /backchannel-logout); "" for none
//
// Every login id is an account: its subject is the id, its email <id>@example.com.
// Prints "oidc-provider ready <issuer>" on stdout once it listens.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.argv[2] || process.env.PORT);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node provider.js PORT');
  process.exit(2);
}
const redirectUris = (process.env.OIDC_REDIRECT_URI || '').split(',').filter(Boolean);
if (redirectUris.length === 0) {
  console.error('OIDC_REDIRECT_URI is required');
  process.exit(2);
}
const alg = process.env.OIDC_ID_TOKEN_ALG || 'RS256';
const keyTypes = {
  RS256: ['rsa', { modulusLength: 2048 }],
  ES256: ['ec', { namedCurve: 'P-256' }],
  EdDSA: ['ed25519', {}],
};
if (!keyTypes[alg]) {
  console.error(`OIDC_ID_TOKEN_ALG must be one of ${Object.keys(keyTypes).join(', ')}`);
  process.exit(2);
}
const [type, options] = keyTypes[alg];
const { privateKey } = generateKeyPairSync(type, options);
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: `test-${alg.toLowerCase()}-${randomBytes(4).toString('hex')}`,
  use: 'sig',
  alg,
};

const authMethod = process.env.OIDC_AUTH_METHOD || 'client_secret_basic';
// Back-Channel Logout 1.0: ending the session at /session/end (features.rpInitiatedLogout,
// on by default) POSTs a logout token (typ logout+jwt, sid and sub) to this URI before the
// end-session answer; with backchannel_logout_session_required the ID tokens carry sid.
const backchannelUri = process.env.OIDC_BACKCHANNEL_LOGOUT_URI
  ?? redirectUris[0].replace(/\/callback$/, '/backchannel-logout');
const issuer = `http://127.0.0.1:${port}`;
const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.OIDC_CLIENT_ID || 'tokend',
      client_secret: process.env.OIDC_CLIENT_SECRET || 'tokend-test-secret',
      redirect_uris: redirectUris,
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: authMethod,
      id_token_signed_response_alg: alg,
      ...(backchannelUri
        ? { backchannel_logout_uri: backchannelUri, backchannel_logout_session_required: true }
        : {}),
    },
  ],
  clientDefaults: { id_token_signed_response_alg: alg },
  // Discovery then announces this one method, and the relying party must pick it.
  clientAuthMethods: [authMethod],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  pkce: { required: () => true, methods: ['S256'] },
  features: { devInteractions: { enabled: true }, backchannelLogout: { enabled: true } },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['preferred_username', 'name'],
  },
  // Profile and email claims in the ID token itself, as Google, Keycloak and Auth0 do.
  conformIdTokenClaims: false,
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims() {
        return {
          sub,
          email: `${sub}@example.com`,
          email_verified: true,
          preferred_username: sub,
          name: `Test ${sub}`,
        };
      },
    };
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ready ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
