// SPDX-License-Identifier: MIT
// One call of the official hypeman TypeScript SDK (@onkernel/hypeman, pinned in package.json):
// client.resources.reclaimMemory(params) against ballastd's /resources/memory/reclaim, for
// tests/e2e/test_hypeman_sdk.py. The SDK is found through NODE_PATH (installed by npm ci into the
// build directory). argv[2] is a JSON object {base_url, api_key, params}; one JSON line goes to
// stdout: {"ok": true, "value": <what the SDK returned>} or {"ok": false, ...} describing the error
// the SDK raised (its class, the SDK error classes it is an instance of, status, parsed body,
// message). Exit 0 in both cases; anything else (bad arguments, the SDK missing) exits 2.
'use strict';

let Hypeman;
try {
  Hypeman = require('@onkernel/hypeman');
} catch (e) {
  process.stderr.write(`cannot load @onkernel/hypeman (NODE_PATH=${process.env.NODE_PATH}): ${e.message}\n`);
  process.exit(2);
}

async function main() {
  const arg = JSON.parse(process.argv[2] || '{}');
  const client = new Hypeman({ baseURL: arg.base_url, apiKey: arg.api_key, maxRetries: 0, timeout: 60000 });
  const { VERSION } = require('@onkernel/hypeman/version');
  try {
    const value = await client.resources.reclaimMemory(arg.params);
    // What a caller gets: a plain object with hypeman's fields (not a wrapper), checked by the
    // Python side key by key.
    process.stdout.write(JSON.stringify({ ok: true, sdk_version: VERSION, type: typeof value, value }) + '\n');
  } catch (e) {
    const classes = [
      'HypemanError', 'APIError', 'BadRequestError', 'AuthenticationError', 'PermissionDeniedError',
      'NotFoundError', 'ConflictError', 'UnprocessableEntityError', 'RateLimitError', 'InternalServerError',
      'APIConnectionError',
    ].filter((name) => Hypeman[name] && e instanceof Hypeman[name]);
    process.stdout.write(JSON.stringify({
      ok: false,
      sdk_version: VERSION,
      class: e && e.constructor ? e.constructor.name : typeof e,
      instance_of: classes,
      status: e.status === undefined ? null : e.status,
      error: e.error === undefined ? null : e.error,
      message: String(e && e.message),
    }) + '\n');
  }
}

main().catch((e) => {
  process.stderr.write(`${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
