// A real OpenID Connect provider (the `oidc-provider` package) for Keyway's
// end-to-end SSO tests. Test-only: plain http on loopback, in-memory storage,
// the package's development login/consent forms (devInteractions).
//
// Prints exactly one JSON line to stdout once listening:
//   {"issuer":"http://127.0.0.1:PORT"}
// and exits when its stdin closes or on SIGTERM/SIGINT.
//
// Environment:
//   PORT           port to listen on (default 0: any free port)
//   CLIENT_SECRET  secret of the single client "keyway" (required)
//   ACCOUNTS_FILE  JSON {"alice": {"password", "email", "groups": [..]}, ..},
//                  re-read at every login and every findAccount (required)
//   ISSUED_FILE    optional: every token /token hands out, every device code and
//                  every authorization code is appended, one a line
//   CONTROL_FILE   optional JSON, re-read at every request:
//                    "clock_offset_s": N     ID tokens are minted with the clock
//                                            shifted by N seconds (iat/exp move)
//                    "tamper_id_token": true the /token response's id_token gets
//                                            a changed payload (email becomes
//                                            mallory@evil.example) and keeps
//                                            its original signature
//                    "device_interval": N    adds "interval": N to the device
//                                            authorization response (the
//                                            provider itself sends none)
//
// A login with an unknown user or a wrong password does not sign in: the
// interaction ends with error=access_denied, error_description "invalid user
// name or password" (code flow: redirected to the client's redirect_uri;
// device flow: the device code is denied and the page says the sign-in was
// interrupted).

import { AsyncLocalStorage } from 'node:async_hooks';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { appendFileSync, readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import * as querystring from 'node:querystring';

import Provider from 'oidc-provider';

const { CLIENT_SECRET, ACCOUNTS_FILE, CONTROL_FILE, ISSUED_FILE } = process.env;
if (!CLIENT_SECRET || !ACCOUNTS_FILE) {
  process.stderr.write('provider.mjs: CLIENT_SECRET and ACCOUNTS_FILE are required\n');
  process.exit(2);
}

function readJson(path, fallback) {
  if (!path) return fallback;
  try {
    return JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    if (err.code === 'ENOENT') return fallback;
    throw err;
  }
}

const accounts = () => readJson(ACCOUNTS_FILE, {});
let control = {};

// The clock shift applies only while an ID token is minted, so that cookies,
// interactions and codes keep working with any offset.
const shifted = new AsyncLocalStorage();
const realNow = Date.now.bind(Date);
Date.now = () => realNow() + (shifted.getStore() ? Number(control.clock_offset_s || 0) * 1000 : 0);

async function findAccount(_ctx, id) {
  const acct = accounts()[id];
  if (!acct) return undefined;
  return {
    accountId: id,
    async claims() {
      const now = accounts()[id] || acct;
      return { sub: id, email: now.email, email_verified: true, groups: now.groups || [] };
    },
  };
}

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' };

const server = createServer();
await new Promise((resolve) => server.listen(Number(process.env.PORT || 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'keyway',
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    response_types: ['code'],
    application_type: 'native',
    // The CLI's loopback callback, and the console's on the admin listener.
    redirect_uris: ['http://127.0.0.1/callback', 'http://127.0.0.1/ui/login/callback'],
  }],
  findAccount,
  claims: {
    acr: null, sid: null, auth_time: null, iss: null,
    openid: ['sub'], email: ['email', 'email_verified'], groups: ['groups'],
  },
  scopes: ['openid', 'email', 'groups', 'offline_access'],
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
  },
  pkce: { required: () => true },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  jwks: { keys: [signingKey] },
  ttl: {
    IdToken: 3600,
    AccessToken: 3600,
    AuthorizationCode: 300,
    DeviceCode: 600,
    Interaction: 3600,
    Session: 86400,
    Grant: 86400,
    RefreshToken: 86400,
  },
});

const mintIdToken = provider.IdToken.prototype.issue;
provider.IdToken.prototype.issue = function issue(...args) {
  return shifted.run(true, () => mintIdToken.apply(this, args));
};

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return querystring.parse(Buffer.concat(chunks).toString('utf8'));
}

const b64 = (buf) => Buffer.from(buf).toString('base64url');

provider.use(async (ctx, next) => {
  control = readJson(CONTROL_FILE, {});

  // The devInteractions login form takes any login: check the password here.
  if (ctx.method === 'POST' && /^\/interaction\/[^/]+$/.test(ctx.path)) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.prompt.name === 'login') {
      const body = await readBody(ctx.req);
      const user = String(body.login || '');
      const acct = Object.hasOwn(accounts(), user) ? accounts()[user] : undefined;
      const result = acct && acct.password === body.password
        ? { login: { accountId: user } }
        : { error: 'access_denied', error_description: 'invalid user name or password' };
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
        mergeWithLastSubmission: false,
      });
      ctx.status = 303;
      ctx.redirect(returnTo);
      return;
    }
  }

  await next();

  // Every token the provider hands out, one a line, so a test can show Keyway
  // wrote none of them anywhere (the canary).
  if (ISSUED_FILE && ctx.method === 'POST' && ['/token', '/device/auth'].includes(ctx.path) && ctx.body) {
    for (const k of ['id_token', 'access_token', 'refresh_token', 'device_code']) {
      if (typeof ctx.body[k] === 'string') appendFileSync(ISSUED_FILE, `${ctx.body[k]}\n`);
    }
  }
  // And every authorization code, from the redirect that carries it.
  const location = ctx.response.get('location');
  if (ISSUED_FILE && location && location.includes('code=')) {
    const code = new URL(location, issuer).searchParams.get('code');
    if (code) appendFileSync(ISSUED_FILE, `${code}\n`);
  }

  if (ctx.method === 'POST' && ctx.path === '/token' && control.tamper_id_token
      && ctx.body && typeof ctx.body.id_token === 'string') {
    const [h, p, s] = ctx.body.id_token.split('.');
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString('utf8'));
    claims.email = 'mallory@evil.example';
    ctx.body = { ...ctx.body, id_token: [h, b64(JSON.stringify(claims)), s].join('.') };
  }
  if (ctx.method === 'POST' && ctx.path === '/device/auth' && control.device_interval
      && ctx.body && ctx.body.device_code) {
    ctx.body = { ...ctx.body, interval: Number(control.device_interval) };
  }
});

server.on('request', provider.callback());

process.stdout.write(`${JSON.stringify({ issuer })}\n`);
// The reader of stdout stops after that line: the package's notices (console.log,
// console.info) go to stderr, and a closed stdout is not a crash.
process.stdout.on('error', () => {});
console.log = console.info = (...a) => process.stderr.write(`${a.join(' ')}\n`);

const stop = () => { server.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.on('error', stop);
process.stdin.resume();
