#!/usr/bin/env node
// A Node.js client of cellplane's ComputeService, to show the API works from
// another language with nothing but the .proto files.
//
//   node client.js HOST:PORT TOKEN [TIMEOUT_SECONDS]
//
// Lists the flavors, creates one cirros instance of flavor "1", polls it until
// it is ACTIVE, then prints one JSON line {"uuid", "vm_state", "name",
// "cell_path", "flavors"} and exits 0. Any error, an ERROR instance, or the
// timeout (default 60 s) exits non-zero with the reason on stderr.
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '..', '..', 'protos');
const CIRROS = '5f6a1c0e-0000-4000-8000-000000000001';
const RPC_TIMEOUT_MS = 10000;
const POLL_MS = 200;

function fail(message) {
  process.stderr.write(`client.js: ${message}\n`);
  process.exit(1);
}

function loadService() {
  // google/protobuf/timestamp.proto is not under protos/: protobufjs (under
  // proto-loader) carries the well-known types itself.
  const definition = protoLoader.loadSync(path.join(PROTOS, 'cellplane/v1/compute.proto'), {
    includeDirs: [PROTOS],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).cellplane.v1.ComputeService;
}

// One unary call as a promise, with the bearer token and a deadline.
function call(client, method, request, token) {
  const metadata = new grpc.Metadata();
  metadata.set('authorization', `Bearer ${token}`);
  const deadline = new Date(Date.now() + RPC_TIMEOUT_MS);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline }, (err, response) => {
      if (err) {
        reject(new Error(`${method}: ${grpc.status[err.code] || err.code}: ${err.details}`));
      } else {
        resolve(response);
      }
    });
  });
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function main(address, token, timeoutSeconds) {
  const ComputeService = loadService();
  const client = new ComputeService(address, grpc.credentials.createInsecure());
  try {
    const { flavors } = await call(client, 'ListFlavors', {}, token);
    if (!flavors.some((f) => f.id === '1')) {
      throw new Error(`flavor "1" is not listed: ${JSON.stringify(flavors.map((f) => f.id))}`);
    }
    const created = await call(
      client,
      'CreateInstances',
      { name: `node-${process.pid}`, flavor_id: '1', image_id: CIRROS },
      token,
    );
    if (created.instances.length !== 1) {
      throw new Error(`CreateInstances returned ${created.instances.length} instances`);
    }
    const { uuid } = created.instances[0];
    const deadline = Date.now() + timeoutSeconds * 1000;
    for (;;) {
      const { instance } = await call(client, 'GetInstance', { uuid }, token);
      if (instance.vm_state === 'VM_STATE_ACTIVE') {
        const out = {
          uuid,
          vm_state: instance.vm_state,
          name: instance.name,
          cell_path: instance.cell_path,
          flavors: flavors.map((f) => f.id),
        };
        process.stdout.write(`${JSON.stringify(out)}\n`);
        return;
      }
      if (instance.vm_state === 'VM_STATE_ERROR') {
        throw new Error(`instance ${uuid} went to ERROR: ${JSON.stringify(instance.fault)}`);
      }
      if (Date.now() > deadline) {
        throw new Error(`instance ${uuid} still ${instance.vm_state} after ${timeoutSeconds} s`);
      }
      await sleep(POLL_MS);
    }
  } finally {
    client.close();
  }
}

const [address, token, timeout] = process.argv.slice(2);
if (!address || !token) {
  fail('usage: node client.js HOST:PORT TOKEN [TIMEOUT_SECONDS]');
}
const timeoutSeconds = Number(timeout || 60);
if (!(timeoutSeconds > 0)) {
  fail(`timeout must be a positive number of seconds, got ${timeout}`);
}
// A last guard: whatever hangs, the process ends.
setTimeout(() => fail(`gave up after ${timeoutSeconds + 15} s`), (timeoutSeconds + 15) * 1000).unref();
main(address, token, timeoutSeconds).then(
  () => process.exit(0),
  (err) => fail(err.message),
);
