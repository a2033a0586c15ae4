// panva's oidc-provider configured like idhub for bench/bench_peer.py: client credentials with
// RFC 9068-style JWT access tokens chosen through resource indicators (one resource server per
// algorithm, ES256 and RS256, keys generated at start), introspection enabled, confidential
// clients with client_secret_basic. One Node process on a loopback port; state in memory.
//
//   node server.mjs PORT SECRET
//
// Prints "ready <port>" on stdout once it listens.
import { generateKeyPairSync } from "node:crypto";

import Provider from "oidc-provider";

const [port, secret] = [Number(process.argv[2]), process.argv[3]];
if (!port || !secret) {
  console.error("usage: node server.mjs PORT SECRET");
  process.exit(2);
}
const issuer = `http://127.0.0.1:${port}`;

function privateJwk(type, options, alg, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: "jwk" }), alg, kid, use: "sig" };
}

const keys = [
  // The first key of a type is the default one; RS256 is also what ID tokens would use.
  privateJwk("rsa", { modulusLength: 2048 }, "RS256", "rs256"),
  privateJwk("ec", { namedCurve: "P-256" }, "ES256", "es256"),
];

// Each client gets tokens for its own resource server by default, as idhub's clients get their
// default audience; the resource server decides the token's algorithm.
const resourceOf = { "bench-es": "urn:bench:es256", "bench-rs": "urn:bench:rs256" };
const servers = {
  "urn:bench:es256": "ES256",
  "urn:bench:rs256": "RS256",
};

const client = (clientId) => ({
  client_id: clientId,
  client_secret: secret,
  grant_types: ["client_credentials"],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: "client_secret_basic",
  introspection_endpoint_auth_method: "client_secret_basic",
  scope: "authz",
});

const provider = new Provider(issuer, {
  clients: [client("bench-es"), client("bench-rs"), client("bench-opaque")],
  jwks: { keys },
  scopes: ["authz"],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, c, oneOf) => oneOf ?? resourceOf[c.clientId],
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resource) => {
        const alg = servers[resource];
        if (!alg) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: "authz",
          audience: resource,
          accessTokenTTL: 3600,
          accessTokenFormat: "jwt",
          jwt: { sign: { alg } },
        };
      },
    },
  },
  // No logging of requests, like idhub's benchmark configuration.
  renderError: async (ctx, out) => {
    ctx.type = "json";
    ctx.body = out;
  },
});
provider.proxy = false;

provider.listen(port, "127.0.0.1", () => {
  console.log(`ready ${port}`);
});
