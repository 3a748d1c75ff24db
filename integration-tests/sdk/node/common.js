'use strict';
// What the driver modes share (e2e.js and message_types.js): the SDK, loaded from
// $RMQ_E2E_NODE_DIR (default: sdk/.work/node, installed by setup.sh), and client helpers.
//
// The SDK's PushConsumer always logs to ~/logs/rocketmq/, so HOME is redirected to $RMQ_E2E_HOME
// before the SDK is loaded.

const path = require('node:path');
const fs = require('node:fs');
const { createRequire } = require('node:module');

process.env.HOME = process.env.RMQ_E2E_HOME || path.join(__dirname, '..', '.work', 'home');
fs.mkdirSync(process.env.HOME, { recursive: true });

const sdkDir = process.env.RMQ_E2E_NODE_DIR || path.join(__dirname, '..', '.work', 'node');
const sdkRequire = createRequire(path.join(sdkDir, 'package.json'));
const sdk = sdkRequire('rocketmq-client-nodejs');
const sdkVersion = sdkRequire('rocketmq-client-nodejs/package.json').version;
// The protocol enums (TransactionResolution, ...) are not re-exported by the SDK's index.
const proto = sdkRequire('rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb');

// The SDK's default logger writes files under ~/logs; log to stderr instead.
const logger = {
  info: (...a) => console.error('[sdk INFO]', ...a),
  warn: (...a) => console.error('[sdk WARN]', ...a),
  error: (...a) => console.error('[sdk ERROR]', ...a),
  debug: () => {},
};

const describe = err => (err && err.stack ? String(err.message || err) : String(err));

const sleep = ms => new Promise(r => setTimeout(r, ms));

/** Local epoch time in (fractional) milliseconds. */
const nowMs = () => performance.timeOrigin + performance.now();

function withTimeout(promise, ms, what) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms}ms`)), ms);
  });
  return Promise.race([ promise, limit ]).finally(() => clearTimeout(timer));
}

async function shutdownBounded(client, ms = 15000) {
  try {
    await withTimeout(client.shutdown(), ms, 'shutdown()');
    return null;
  } catch (err) {
    return describe(err);
  }
}

// `--namespace NS`: every client in namespace NS (sent in the x-mq-namespace header).
function clientOptions(args) {
  return { endpoints: args.endpoint, namespace: args.namespace || '', logger };
}

module.exports = { sdk, sdkVersion, proto, describe, sleep, nowMs, withTimeout, shutdownBounded,
  clientOptions };
