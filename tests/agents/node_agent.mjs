#!/usr/bin/env node
// A Node.js "agent": one HTTP request with undici (pinned in package-lock.json), result as one
// JSON line. Run `npm ci` in this folder first.
//
//   node node_agent.mjs --url URL [--proxy URL] [--no-tunnel]
//                       [--method M] [--header 'k: v']... [--data-file F]
//                       [--cacert FILE] [--proxy-cacert FILE]
//                       [--client-cert FILE --client-key FILE]
//                       [--proxy-client-cert FILE --proxy-client-key FILE] [--timeout SECONDS]
//
// Without --proxy the request goes direct (undici Agent); with it, through undici's ProxyAgent,
// which by default tunnels every request, http:// ones included, with CONNECT (undici's
// default); --no-tunnel sends http:// requests to an http:// proxy in absolute-form instead.
// Environment proxy variables are never read. --cacert is the only CA trusted for the origin's
// TLS as the agent sees it (through an intercepting proxy: tollgate's interception CA);
// --proxy-cacert the CA trusted for an https:// proxy. --client-cert/--client-key go to the
// origin (inside intercepted TLS), --proxy-client-cert/--proxy-client-key to the proxy.
//
// Output (stdout, one line):
//   {"status":int,"headers":{lower-cased},"body_len":int,"body_sha256":hex,
//    "body_text":first 4 KiB as text or null,"http_version":"HTTP/1.1"}
// undici is used without allowH2, so it only speaks HTTP/1.1. The body is streamed and hashed
// incrementally; undici's request() does no content decoding. A repeated header's values are
// joined with ", ". On a transport error: {"error":"..."} and exit status 1.

import { createHash } from 'node:crypto'
import { createReadStream, readFileSync, statSync } from 'node:fs'
import { parseArgs } from 'node:util'
import { Agent, ProxyAgent, request } from 'undici'

const TEXT_PREFIX = 4096

function fail (message) {
  process.stdout.write(JSON.stringify({ error: message }) + '\n')
  process.exit(1)
}

function tlsOptions (ca, cert, key) {
  const o = {}
  if (ca) o.ca = [readFileSync(ca)]
  if (cert) o.cert = readFileSync(cert)
  if (key) o.key = readFileSync(key)
  return o
}

async function main () {
  const { values: a } = parseArgs({
    options: {
      url: { type: 'string' },
      proxy: { type: 'string' },
      'no-tunnel': { type: 'boolean', default: false },
      method: { type: 'string', default: 'GET' },
      header: { type: 'string', multiple: true, default: [] },
      'data-file': { type: 'string' },
      cacert: { type: 'string' },
      'proxy-cacert': { type: 'string' },
      'client-cert': { type: 'string' },
      'client-key': { type: 'string' },
      'proxy-client-cert': { type: 'string' },
      'proxy-client-key': { type: 'string' },
      timeout: { type: 'string', default: '30' }
    },
    strict: true
  })
  if (!a.url) {
    process.stderr.write('usage: node_agent.mjs --url URL [--proxy URL] ...\n')
    process.exit(2)
  }
  const timeoutMs = Math.round(parseFloat(a.timeout) * 1000)

  const headers = {}
  for (const h of a.header) {
    const i = h.indexOf(':')
    if (i < 0) {
      process.stderr.write(`bad --header ${JSON.stringify(h)}: expected 'name: value'\n`)
      process.exit(2)
    }
    headers[h.slice(0, i).trim()] = h.slice(i + 1).trim()
  }
  let body
  if (a['data-file']) {
    headers['content-length'] = String(statSync(a['data-file']).size)
    body = createReadStream(a['data-file'])
  }

  const requestTls = tlsOptions(a.cacert, a['client-cert'], a['client-key'])
  const common = { headersTimeout: timeoutMs, bodyTimeout: timeoutMs, connectTimeout: timeoutMs }
  const dispatcher = a.proxy
    ? new ProxyAgent({
      uri: a.proxy,
      proxyTunnel: !a['no-tunnel'],
      requestTls,
      proxyTls: tlsOptions(a['proxy-cacert'], a['proxy-client-cert'], a['proxy-client-key']),
      ...common
    })
    : new Agent({ connect: requestTls, ...common })

  let res
  try {
    res = await request(a.url, {
      method: a.method,
      headers,
      body,
      dispatcher,
      signal: AbortSignal.timeout(timeoutMs)
    })
    const hash = createHash('sha256')
    let len = 0
    const prefix = []
    let prefixLen = 0
    for await (const chunk of res.body) {
      hash.update(chunk)
      len += chunk.length
      if (prefixLen < TEXT_PREFIX) {
        const part = chunk.subarray(0, TEXT_PREFIX - prefixLen)
        prefix.push(part)
        prefixLen += part.length
      }
    }
    let text = null
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(prefix))
    } catch {
      text = null
    }
    const outHeaders = {}
    for (const [k, v] of Object.entries(res.headers)) {
      outHeaders[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v
    }
    process.stdout.write(JSON.stringify({
      status: res.statusCode,
      headers: outHeaders,
      body_len: len,
      body_sha256: hash.digest('hex'),
      body_text: text,
      http_version: 'HTTP/1.1'
    }) + '\n')
  } catch (e) {
    const cause = e.cause ? ` (cause: ${e.cause.code || ''} ${e.cause.message || e.cause})` : ''
    fail(`${e.name}: ${e.code ? e.code + ': ' : ''}${e.message}${cause}`)
  } finally {
    await dispatcher.close().catch(() => {})
  }
}

main().catch((e) => fail(`${e.name}: ${e.message}`))
