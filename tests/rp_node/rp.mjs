// An independent relying party for idhub's test suite, built on openid-client (pinned in
// package-lock.json). Two steps over stdin/stdout, one JSON object per line:
//   1. discovery, PKCE and the authorization URL  -> {"authorization_url": ...}
//   2. reads the callback URL the test's browser landed on, exchanges the code, validates the
//      ID token (signature, iss, aud, nonce, exp) and calls userinfo -> {"claims": ..., ...}
// Usage: node rp.mjs ISSUER CLIENT_ID CLIENT_SECRET REDIRECT_URI
import * as client from 'openid-client';
import { createInterface } from 'node:readline';

const [issuer, clientId, clientSecret, redirectUri] = process.argv.slice(2);

function emit(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

async function main() {
  const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  // idhub runs on http://127.0.0.1 in tests; openid-client refuses plain http unless told.
  const config = await client.discovery(
    new URL(issuer),
    clientId,
    undefined,
    client.ClientSecretBasic(clientSecret),
    { execute: [client.allowInsecureRequests] },
  );
  const verifier = client.randomPKCECodeVerifier();
  const challenge = await client.calculatePKCECodeChallenge(verifier);
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: redirectUri,
    scope: 'openid profile email',
    code_challenge: challenge,
    code_challenge_method: 'S256',
    state,
    nonce,
  });
  emit({
    authorization_url: url.href,
    iss_parameter_supported: config.serverMetadata().authorization_response_iss_parameter_supported ?? false,
  });

  const next = await lines.next();
  if (next.done) throw new Error('no callback URL on stdin');
  const tokens = await client.authorizationCodeGrant(config, new URL(next.value.trim()), {
    pkceCodeVerifier: verifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  const userinfo = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  emit({ claims, userinfo, token_type: tokens.token_type, scope: tokens.scope ?? null });
}

main().then(
  () => process.exit(0),
  (error) => {
    // Error messages are not enumerable; name the cause chain explicitly.
    const cause = [];
    for (let c = error?.cause; c && cause.length < 5; c = c.cause) {
      cause.push(c instanceof Error ? `${c.code ?? c.name}: ${c.message}` : JSON.stringify(c));
    }
    emit({
      error: error?.code ?? error?.name ?? 'Error',
      message: String(error?.message ?? error),
      cause,
    });
    process.exit(1);
  },
);
