#!/usr/bin/env node
// A real OAuth 2.0 authorization server for tollgate's credential tests: node-oidc-provider
// (the certified OpenID Connect implementation, pinned in tests/agents/package.json) with
// client credentials (RFC 6749 §4.4), introspection (RFC 7662), revocation (RFC 7009) and
// resource indicators (RFC 8707) switched on.
//
// Usage: node tests/authz/oidc_server.mjs CONFIG
//   CONFIG is a JSON object, given inline (starts with "{") or as a file path:
//   {
//     "clients": [{"client_id": "tg", "client_secret": "…", "scopes": ["repo:read"],
//                  "grant_types": ["client_credentials", "urn:ietf:params:oauth:grant-type:token-exchange"],
//                  "token_endpoint_auth_method": "client_secret_basic" | "client_secret_post"}],
//     "access_token_ttl": 300,                      // seconds (default 300)
//     "strict_auth_method": true,                   // default; see below
//     "resource_servers": {"https://api.example/": {"scopes": ["repo:read"], "ttl": 60}},
//                                                  // optional; without it any absolute-URI
//                                                  // `resource` is accepted with every scope
//     "exchange": {"jwks_url": "http://…/.well-known/jwks.json",   // optional, see below
//                  "issuer": "tollgate", "audience": "…"}          // optional checks
//   }
// It listens on 127.0.0.1, port 0 (or $OIDC_PORT), and prints exactly one line
// "ready <port>" on stdout once it accepts. Every token request is logged as one line on
// stdout (grant, client, scope, status): never a secret, never a token.
//
// What is the real server and what is test code:
// - REAL (oidc-provider): client authentication (client_secret_basic / client_secret_post),
//   the client_credentials grant, scope and resource handling, token storage, introspection,
//   revocation, discovery (/.well-known/openid-configuration).
// - TEST CODE on top of it (this file):
//   * the RFC 8693 token-exchange grant handler (oidc-provider does not ship one). It is
//     registered with provider.registerGrantType, verifies the subject JWT against the JWKS at
//     `exchange.jwks_url` with `jose` (ES256, EdDSA, RS256; exp and sub required) and issues a
//     real ClientCredentials access token of the provider, so introspection shows it active,
//     with `sub` = the subject token's `sub` and `act` = {"sub": client_id}.
//   * strict client-auth method: oidc-provider accepts client_secret_basic and
//     client_secret_post interchangeably; this file answers 401 invalid_client at the token
//     endpoint when a client authenticates otherwise than it is registered (off with
//     "strict_auth_method": false), so a test sees which method tollgate used.
//   * counters (GET /_stats, POST /_stats/reset), the failure switch (POST /_fail
//     {"token": N} → the next N token requests get 503; {"delay_ms": D} → every token
//     response waits D ms) and POST /_exchange {"jwks_url": …} (set the subject-token JWKS
//     after start: tollgate's admin port is only known once tollgate runs).

import { readFileSync } from 'node:fs';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { pathToFileURL } from 'node:url';

// The packages live in tests/agents/node_modules (one package.json / lock for every Node
// peer the tests use, installed by `npm ci` in tests/agents): resolve them from there.
const fromAgents = createRequire(new URL('../agents/package.json', import.meta.url));
const load = (name) => import(pathToFileURL(fromAgents.resolve(name)).href);
const { default: Provider, errors } = await load('oidc-provider');
const jose = await load('jose');

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const SUBJECT_ALGS = ['ES256', 'EdDSA', 'RS256'];

function loadConfig(arg) {
  if (!arg) {
    throw new Error('usage: oidc_server.mjs CONFIG (JSON or a path to a JSON file)');
  }
  const text = arg.trimStart().startsWith('{') ? arg : readFileSync(arg, 'utf8');
  const config = JSON.parse(text);
  if (!Array.isArray(config.clients) || config.clients.length === 0) {
    throw new Error('config.clients must be a non-empty array');
  }
  return config;
}

const config = loadConfig(process.argv[2]);
const ttl = Number(config.access_token_ttl ?? 300);
const exchange = { jwks_url: null, issuer: null, audience: null, ...(config.exchange ?? {}) };

const clientScopes = (c) => c.scopes ?? (c.scope ? c.scope.split(' ') : []);
const allScopes = [...new Set(config.clients.flatMap(clientScopes))];

const strictAuthMethod = config.strict_auth_method ?? true;

const clients = config.clients.map((c) => ({
  client_id: c.client_id,
  client_secret: c.client_secret,
  grant_types: c.grant_types ?? ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: c.token_endpoint_auth_method ?? 'client_secret_basic',
  scope: clientScopes(c).join(' ') || undefined,
}));

const clientsById = new Map(clients.map((c) => [c.client_id, c]));

// --- counters and switches (test code) ---------------------------------------------------

function freshStats() {
  return {
    token: {
      total: 0,
      by_grant: {},
      by_status: {},
      by_client: {},
      by_auth_method: {},
      injected_failures: 0,
      // Token requests being answered right now, and the most at once since the last reset:
      // with a delay, a single-flight test sees 1 where a stampede would show N.
      in_flight: 0,
      max_in_flight: 0,
    },
    introspection: { total: 0, by_status: {}, by_client: {} },
    revocation: { total: 0, by_status: {}, by_client: {} },
    exchanges: [],
  };
}
let stats = freshStats();
let failNextToken = 0;
let tokenDelayMs = 0;

const bump = (obj, key) => { obj[key] = (obj[key] ?? 0) + 1; };
const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

async function readBody(req, limit = 1 << 20) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// The client id of an `Authorization: Basic` header (form-encoded, RFC 6749 §2.3.1).
function clientFromBasic(header) {
  const m = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!m) return undefined;
  const decoded = Buffer.from(m[1], 'base64').toString('utf8');
  const i = decoded.indexOf(':');
  const id = (i === -1 ? decoded : decoded.slice(0, i)).replaceAll('+', ' ');
  try {
    return decodeURIComponent(id);
  } catch {
    return id;
  }
}

function logToken({ grant, client, auth, scope, status, detail }) {
  const parts = [`token grant=${grant ?? '-'}`, `client=${client ?? '-'}`, `auth=${auth}`,
    `scope=${JSON.stringify(scope ?? '')}`, `status=${status}`];
  if (detail) parts.push(`detail=${JSON.stringify(detail)}`);
  process.stdout.write(`${parts.join(' ')}\n`);
}

function sendJson(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

// The control routes are answered by plain node:http before oidc-provider sees anything.
async function control(req, res) {
  const url = new URL(req.url, 'http://x');
  if (req.method === 'GET' && url.pathname === '/_stats') {
    return sendJson(res, 200, { ...stats, fail_next_token: failNextToken, token_delay_ms: tokenDelayMs });
  }
  if (req.method === 'POST' && url.pathname === '/_stats/reset') {
    await readBody(req);
    stats = freshStats();
    return sendJson(res, 200, stats);
  }
  if (req.method === 'POST' && (url.pathname === '/_fail' || url.pathname === '/_exchange')) {
    let body;
    try {
      body = JSON.parse((await readBody(req)) || '{}');
    } catch (e) {
      return sendJson(res, 400, { error: `bad json: ${e.message}` });
    }
    if (url.pathname === '/_fail') {
      if (body.token !== undefined) failNextToken = Math.max(0, Number(body.token) | 0);
      if (body.delay_ms !== undefined) tokenDelayMs = Math.max(0, Number(body.delay_ms) | 0);
      return sendJson(res, 200, { fail_next_token: failNextToken, token_delay_ms: tokenDelayMs });
    }
    for (const key of ['jwks_url', 'issuer', 'audience']) {
      if (body[key] !== undefined) exchange[key] = body[key];
    }
    return sendJson(res, 200, exchange);
  }
  return sendJson(res, 404, { error: 'unknown control route' });
}

// --- the provider ------------------------------------------------------------------------

const server = createServer();
server.listen(Number(process.env.OIDC_PORT ?? 0), '127.0.0.1');
await once(server, 'listening');
const { port } = server.address();
const issuer = `http://127.0.0.1:${port}`;

const signingKey = await jose.generateKeyPair('ES256', { extractable: true });
const signingJwk = { ...(await jose.exportJWK(signingKey.privateKey)), kid: 'oidc-server-es256', alg: 'ES256', use: 'sig' };

function resourceServerInfo(resource) {
  const configured = config.resource_servers;
  if (configured) {
    const rs = configured[resource];
    if (!rs) throw new errors.InvalidTarget();
    return {
      scope: (rs.scopes ?? allScopes).join(' '),
      audience: rs.audience ?? resource,
      accessTokenTTL: Number(rs.ttl ?? ttl),
      accessTokenFormat: 'opaque',
    };
  }
  return { scope: allScopes.join(' '), audience: resource, accessTokenTTL: ttl, accessTokenFormat: 'opaque' };
}

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [signingJwk] },
  // The only signing key is ES256 (no ID tokens are issued here, but client metadata is
  // validated against the keystore).
  clientDefaults: { id_token_signed_response_alg: 'ES256' },
  scopes: allScopes,
  cookies: { keys: [jose.base64url.encode(crypto.getRandomValues(new Uint8Array(32)))] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // Any authenticated client may introspect any token (tests introspect with whichever
    // client they hold); only a token's own client may revoke it (the provider's default rule).
    introspection: { enabled: true, allowedPolicy: async () => true },
    revocation: {
      enabled: true,
      allowedPolicy: async (_ctx, client, token) => {
        if (token.clientId !== client.clientId) {
          throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
        }
        return true;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => undefined,
      useGrantedResource: async () => false,
      getResourceServerInfo: async (_ctx, resource) => resourceServerInfo(resource),
    },
  },
  ttl: {
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? ttl,
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? ttl,
  },
  // Token-exchange tokens carry who they were issued for (set by the grant handler below).
  extraTokenClaims: async (ctx) => ctx?.state?.tokenExchangeClaims,
});

// RFC 8693 token exchange — TEST CODE on top of the real server (oidc-provider ships no
// token-exchange grant). The issued token is a real provider ClientCredentials token.
async function tokenExchangeHandler(ctx) {
  const { params, client } = ctx.oidc;
  if (!params.subject_token) throw new errors.InvalidRequest('missing required parameter subject_token');
  if (!params.subject_token_type) throw new errors.InvalidRequest('missing required parameter subject_token_type');
  if (params.subject_token_type !== JWT_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`unsupported subject_token_type (only ${JWT_TOKEN_TYPE})`);
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest(`unsupported requested_token_type (only ${ACCESS_TOKEN_TYPE})`);
  }
  if (!exchange.jwks_url) {
    throw new errors.CustomOIDCProviderError('invalid_grant', 'no subject-token JWKS configured');
  }

  let jwks;
  try {
    const r = await fetch(exchange.jwks_url, { signal: AbortSignal.timeout(5000) });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    jwks = jose.createLocalJWKSet(await r.json());
  } catch (e) {
    throw new errors.CustomOIDCProviderError('invalid_grant', `subject-token JWKS unavailable: ${e.message}`);
  }

  let subject;
  try {
    const verified = await jose.jwtVerify(params.subject_token, jwks, {
      algorithms: SUBJECT_ALGS,
      requiredClaims: ['exp', 'sub'],
      ...(exchange.issuer ? { issuer: exchange.issuer } : {}),
      ...(exchange.audience ? { audience: exchange.audience } : {}),
    });
    subject = verified.payload;
  } catch (e) {
    throw new errors.CustomOIDCProviderError('invalid_grant', `subject_token rejected: ${e.code ?? e.message}`);
  }

  const requested = params.scope ? params.scope.split(' ').filter(Boolean) : [];
  const allowed = new Set(clientScopes(config.clients.find((c) => c.client_id === client.clientId)));
  const notAllowed = requested.filter((s) => !allowed.has(s));
  if (notAllowed.length) {
    throw new errors.InvalidScope('requested scope is not allowed', notAllowed.join(' '));
  }

  const token = new provider.ClientCredentials({ client, scope: requested.join(' ') || undefined });
  if (params.resource) {
    const resource = Array.isArray(params.resource) ? params.resource : [params.resource];
    if (resource.length !== 1) throw new errors.InvalidTarget('only one resource is supported');
    token.resourceServer = new provider.ResourceServer(resource[0], resourceServerInfo(resource[0]));
    const rsScopes = token.resourceServer.scopes;
    token.scope = requested.filter((s) => rsScopes.has(s)).join(' ') || undefined;
  }

  ctx.state.tokenExchangeClaims = { sub: subject.sub, act: { sub: client.clientId } };
  const value = await token.save();
  stats.exchanges.push({
    sub: subject.sub,
    iss: subject.iss ?? null,
    aud: subject.aud ?? null,
    client_id: client.clientId,
    scope: token.scope ?? null,
    resource: params.resource ?? null,
    audience: params.audience ?? null,
    claims: subject, // the verified subject token's claims (the token itself is never kept)
  });

  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: 'Bearer',
    expires_in: token.expiration,
    ...(token.scope ? { scope: token.scope } : {}),
  };
}

provider.registerGrantType(
  TOKEN_EXCHANGE,
  tokenExchangeHandler,
  ['subject_token', 'subject_token_type', 'actor_token', 'actor_token_type',
    'requested_token_type', 'scope', 'resource', 'audience'],
  ['resource', 'audience'],
);

// Counting, failure injection and delay for the token, introspection and revocation
// endpoints (test code). Runs before oidc-provider's router.
provider.use(async (ctx, next) => {
  if (ctx.method !== 'POST') return next();
  if (ctx.path === '/token/introspection' || ctx.path === '/token/revocation') {
    const counter = ctx.path === '/token/introspection' ? stats.introspection : stats.revocation;
    counter.total += 1;
    try {
      await next();
    } finally {
      bump(counter.by_status, String(ctx.status));
      const client = ctx.oidc?.client?.clientId;
      if (client) bump(counter.by_client, client);
    }
    return undefined;
  }
  if (ctx.path !== '/token') return next();

  // Read the form here, once, so the request is counted (grant, client, how the client
  // authenticated) even when it never reaches the provider; the provider then parses the
  // same bytes (oidc-provider takes an already-read body from ctx.request.body).
  let raw;
  try {
    raw = await readBody(ctx.req, 56 * 1024);
  } catch (e) {
    ctx.status = 400;
    ctx.body = { error: 'invalid_request', error_description: `body: ${e.message}` };
    return undefined;
  }
  ctx.request.body = raw;
  const form = new URLSearchParams(ctx.is('application/x-www-form-urlencoded') ? raw : '');
  const grant = form.get('grant_type') ?? 'unknown';
  const basicId = clientFromBasic(ctx.get('authorization'));
  let method = 'none';
  if (basicId !== undefined) method = 'client_secret_basic';
  else if (form.has('client_secret')) method = 'client_secret_post';
  const clientId = basicId ?? form.get('client_id') ?? undefined;
  const scope = form.get('scope');

  // Counted into whatever stats object is current now, even if a reset happens meanwhile.
  const current = stats.token;
  current.total += 1;
  bump(current.by_grant, grant);
  bump(current.by_auth_method, method);
  if (clientId) bump(current.by_client, clientId);
  current.in_flight += 1;
  current.max_in_flight = Math.max(current.max_in_flight, current.in_flight);
  try {
    await answerToken(ctx, next, { current, grant, method, clientId, scope });
  } finally {
    current.in_flight -= 1;
  }
  return undefined;
});

async function answerToken(ctx, next, { current, grant, method, clientId, scope }) {
  const answer = (status, error, description) => {
    bump(current.by_status, String(status));
    logToken({ grant, client: clientId, auth: method, scope, status, detail: description });
    ctx.status = status;
    ctx.set('cache-control', 'no-store');
    ctx.body = { error, error_description: description };
  };

  if (tokenDelayMs > 0) await sleep(tokenDelayMs);
  if (failNextToken > 0) {
    failNextToken -= 1;
    current.injected_failures += 1;
    answer(503, 'temporarily_unavailable', 'injected failure (POST /_fail)');
    return;
  }
  // oidc-provider accepts client_secret_basic and client_secret_post interchangeably for a
  // client registered with either; a test of tollgate's configured method needs the
  // registered one enforced (test code; "strict_auth_method": false turns it off).
  const registered = clientsById.get(clientId)?.token_endpoint_auth_method;
  if (strictAuthMethod && registered && method !== 'none' && method !== registered) {
    answer(401, 'invalid_client', `client is registered for ${registered}, authenticated with ${method}`);
    return;
  }

  try {
    await next();
  } finally {
    bump(current.by_status, String(ctx.status));
    const detail = ctx.status >= 400 ? ctx.body?.error_description ?? ctx.body?.error : undefined;
    logToken({ grant, client: clientId, auth: method, scope, status: ctx.status, detail });
  }
}

const providerCallback = provider.callback();
server.on('request', (req, res) => {
  if (req.url.startsWith('/_')) {
    control(req, res).catch((e) => sendJson(res, 500, { error: String(e) }));
    return;
  }
  providerCallback(req, res);
});

process.stdout.write(`ready ${port}\n`);
