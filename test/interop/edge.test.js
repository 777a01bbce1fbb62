'use strict';
// Local communication at an Outpost edge (docs/edge-local.md) with the
// real azure-iot-device ModuleClient and Client, while the edge's
// upstream link is cut: routes from a child to a module, module to
// module and module to child; ModuleClient.fromConnectionString and
// fromEnvironment; direct methods through ModuleClient.invokeMethod;
// a child's reported properties held offline.
//
// The edge dials the hub through a CuttableProxy. It stays up until the
// edge has synced and loaded the deployment's routes, and is cut before
// any client connects to the edge.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const device = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const {
  Hub, Edge, CuttableProxy, Inbox, Message, NoRetry, withTimeout, waitFor, uniqueId, closeClient,
} = require('./harness');

const T = 10000;
const EDGE = 'edge1';

const ROUTES = {
  childToA: 'FROM /messages/* WHERE NOT IS_DEFINED($connectionModuleId) INTO BrokeredEndpoint("/modules/moduleA/inputs/input1")',
  aToB: 'FROM /messages/modules/moduleA/outputs/output1 INTO BrokeredEndpoint("/modules/moduleB/inputs/input1")',
  aToChild2: 'FROM /messages/modules/moduleA/outputs/output1 INTO BrokeredEndpoint("/devices/child2/messages/devicebound")',
};

const MANIFEST = {
  modulesContent: {
    $edgeAgent: {
      'properties.desired': {
        schemaVersion: '1.1',
        runtime: { type: 'docker', settings: { minDockerVersion: 'v1.25' } },
        systemModules: { edgeAgent: { type: 'docker' }, edgeHub: { type: 'docker' } },
        modules: {},
      },
    },
    $edgeHub: {
      'properties.desired': {
        schemaVersion: '1.1',
        routes: ROUTES,
        storeAndForwardConfiguration: { timeToLiveSecs: 3600 },
      },
    },
  },
};

/** The value of an application (or unparsed system) property, or undefined. */
function prop(msg, key) {
  return msg.properties.getValue(key);
}

/** Calls a callback-style SDK twin method as a promise. */
function reportedUpdate(twin, patch) {
  return new Promise((resolve, reject) => {
    twin.properties.reported.update(patch, (err) => (err ? reject(err) : resolve()));
  });
}

describe('edge local communication with the upstream link cut', { timeout: 90000 }, () => {
  let hub;
  let proxy;
  let edge;
  let tmp;
  const cs = {}; // connection strings through the edge, by client id
  const clients = []; // everything opened, closed in after()
  let child1;
  let child2;
  let moduleB;
  const child2C2D = new Inbox();
  const moduleBInputs = new Inbox();

  /** The CLI's connection string for a device or module, through the edge. */
  async function connectionString(deviceId, moduleId) {
    const args = ['device-identity', 'connection-string', 'show', '--device-id', deviceId,
      '--gateway-hostname', edge.gateway];
    if (moduleId) args.push('--module-id', moduleId);
    return (await hub.cli(args)).trim();
  }

  /** Retries off, the hub's CA (which signed the edge's CA), opened. */
  async function open(client, options = {}) {
    clients.push(client);
    client.setRetryPolicy(new NoRetry());
    client.on('error', () => {}); // surfaced through the calls under test
    await withTimeout(client.setOptions({ ca: hub.ca, ...options }), 5000, 'setOptions');
    await withTimeout(client.open(), T, 'open client through the edge');
    return client;
  }

  before(async () => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-interop-edge-test-'));
    hub = await Hub.start();
    await hub.cli(['device-identity', 'create', '--device-id', EDGE, '--edge-enabled']);
    for (const d of ['child1', 'child2']) await hub.cli(['device-identity', 'create', '--device-id', d]);
    await hub.cli(['device-identity', 'add-children', '--device-id', EDGE, '--child-list', 'child1,child2']);
    for (const m of ['moduleA', 'moduleB']) {
      await hub.cli(['module-identity', 'create', '--device-id', EDGE, '--module-id', m]);
    }
    const manifestFile = path.join(tmp, 'deployment.json');
    fs.writeFileSync(manifestFile, JSON.stringify(MANIFEST));
    await hub.cli(['edge', 'set-modules', '--device-id', EDGE, '--content', manifestFile]);
    const edgeCs = (await hub.cli(['device-identity', 'connection-string', 'show', '--device-id', EDGE])).trim();

    proxy = await CuttableProxy.start(hub.mqttPort);
    edge = await Edge.start(hub, { connectionString: edgeCs, upstreamPort: proxy.port });
    // Ready means synced once; the routes come with the $edgeHub twin,
    // which may land just after. Cut only once the edge has them.
    await waitFor(async () => {
      const st = await edge.status();
      return st.synced && st.link.connected && Object.keys(ROUTES).every((n) => st.routes[n]);
    }, { timeout: 15000, what: 'the edge synced, online, with the deployment routes' })
      .catch((err) => { err.message += `\nedge log:\n${edge.log()}`; throw err; });
    assert.ok(proxy.accepted > 0, 'the edge never dialled the hub through the proxy');
    await proxy.cut();
    await waitFor(async () => (await edge.status()).link.connected === false,
      { timeout: 10000, what: 'the edge to see its link down' });

    for (const d of ['child1', 'child2']) cs[d] = await connectionString(d);
    for (const m of ['moduleA', 'moduleB']) cs[`${EDGE}/${m}`] = await connectionString(EDGE, m);

    child1 = await open(device.Client.fromConnectionString(cs.child1, Mqtt));
    child1.onDeviceMethod('reboot', (req, res) => {
      res.send(200, { rebootedBy: 'child1', got: req.payload }, () => {});
    });
    child1.onDeviceMethod('hang', () => {}); // never answers
    child2 = await open(device.Client.fromConnectionString(cs.child2, Mqtt));
    child2.on('message', (msg) => {
      child2.complete(msg, () => {});
      child2C2D.push(msg);
    });
    moduleB = await open(device.ModuleClient.fromConnectionString(cs[`${EDGE}/moduleB`], Mqtt));
    moduleB.on('inputMessage', (input, msg) => {
      moduleB.complete(msg, () => {});
      moduleBInputs.push({ input, msg });
    });
    moduleB.onMethod('ping', (req, res) => {
      res.send(201, { pong: req.payload }, () => {});
    });
  });

  after(async () => {
    for (const c of clients.reverse()) await closeClient(c);
    if (edge) await edge.stop();
    if (proxy) await proxy.cut();
    if (hub) await hub.stop();
    if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
  });

  /**
   * child1 → (childToA) moduleA input1; moduleA → output1 → (aToB)
   * moduleB input1 and (aToChild2) child2 as C2D. moduleA is the
   * client under test; the test plays its logic step by step.
   */
  async function relayFlow(moduleA) {
    assert.equal((await edge.status()).link.connected, false, 'the link must still be cut');
    const inputs = new Inbox();
    moduleA.on('inputMessage', (input, msg) => {
      moduleA.complete(msg, () => {});
      inputs.push({ input, msg });
    });
    const marker = uniqueId('relay');
    const text = JSON.stringify({ t: 21.5, marker });
    const msg = new Message(text);
    msg.messageId = marker;
    msg.properties.add('marker', marker);
    await withTimeout(child1.sendEvent(msg), T, 'child1 sendEvent');

    const got = await inputs.next((e) => prop(e.msg, 'marker') === marker, T, 'moduleA input1 message');
    assert.equal(got.input, 'input1');
    assert.equal(got.msg.messageId, marker);
    assert.equal(got.msg.getBytes().toString('utf8'), text);
    assert.equal(prop(got.msg, '$.cdid'), 'child1', 'the sender stamped on the module input');
    assert.equal(prop(got.msg, '$.cmid'), undefined);

    const out = new Message(JSON.stringify({ relayed: marker }));
    out.messageId = `${marker}-out`;
    out.properties.add('marker', marker);
    out.properties.add('stage', 'relayed');
    await withTimeout(moduleA.sendOutputEvent('output1', out), T, 'moduleA sendOutputEvent output1');

    const atB = await moduleBInputs.next((e) => prop(e.msg, 'marker') === marker, T, 'moduleB input1 message');
    assert.equal(atB.input, 'input1');
    assert.equal(atB.msg.messageId, `${marker}-out`);
    assert.equal(prop(atB.msg, 'stage'), 'relayed');
    assert.equal(atB.msg.getBytes().toString('utf8'), JSON.stringify({ relayed: marker }));
    assert.equal(prop(atB.msg, '$.cdid'), EDGE);
    assert.equal(prop(atB.msg, '$.cmid'), 'moduleA');

    const atChild2 = await child2C2D.next((m) => prop(m, 'marker') === marker, T, 'child2 C2D message');
    assert.equal(atChild2.messageId, `${marker}-out`);
    assert.equal(prop(atChild2, 'stage'), 'relayed');
    assert.equal(atChild2.getBytes().toString('utf8'), JSON.stringify({ relayed: marker }));
  }

  let moduleA; // the fromConnectionString client, reused for methods

  it('ModuleClient.fromConnectionString with GatewayHostName relays child1 → moduleA → moduleB and child2', async () => {
    assert.match(cs[`${EDGE}/moduleA`], new RegExp(`;GatewayHostName=${edge.gateway}(;|$)`));
    const client = device.ModuleClient.fromConnectionString(cs[`${EDGE}/moduleA`], Mqtt);
    // http.agent: invokeMethod's HTTPS call (see the methods test).
    moduleA = await open(client, { http: { agent: edge.httpsAgent() } });
    await relayFlow(moduleA);
  });

  it('ModuleClient.fromEnvironment (EdgeHubConnectionString, EdgeModuleCACertificateFile) relays the same way', async () => {
    // One moduleA connection at a time, as one deployed module has.
    await closeClient(moduleA);
    const keys = ['EdgeHubConnectionString', 'EdgeModuleCACertificateFile', 'IotHubConnectionString'];
    const saved = Object.fromEntries(keys.map((k) => [k, process.env[k]]));
    let client;
    try {
      process.env.EdgeHubConnectionString = cs[`${EDGE}/moduleA`];
      process.env.EdgeModuleCACertificateFile = hub.caFile;
      delete process.env.IotHubConnectionString;
      client = await withTimeout(device.ModuleClient.fromEnvironment(Mqtt), 5000, 'fromEnvironment');
    } finally {
      for (const k of keys) {
        if (saved[k] === undefined) delete process.env[k];
        else process.env[k] = saved[k];
      }
    }
    clients.push(client);
    client.setRetryPolicy(new NoRetry());
    client.on('error', () => {});
    // No setOptions: the CA must come from EdgeModuleCACertificateFile,
    // else TLS to the edge (whose CA the hub signed) fails.
    await withTimeout(client.open(), T, 'open fromEnvironment module client');
    try {
      await relayFlow(client);
    } finally {
      await closeClient(client);
      // Back to the fromConnectionString client for the method tests.
      await withTimeout(moduleA.open(), T, 'reopen moduleA');
    }
  });

  it('moduleA invokes a direct method on child1 through the edge (ModuleClient.invokeMethod)', async () => {
    // MethodClient POSTs https://{GatewayHostName}/twins/child1/methods
    // with x-ms-edge-moduleId edge1/moduleA and moduleA's SAS. Its host
    // is "localhost:MQTTPORT" (https.request would fail DNS on it and
    // use port 443); the RedirectAgent given as setOptions' http.agent
    // sends the socket to the edge's HTTPS port and verifies "localhost".
    const payload = { delay: 1, marker: uniqueId('m') };
    const started = Date.now();
    const res = await withTimeout(moduleA.invokeMethod('child1', {
      methodName: 'reboot', payload, responseTimeoutInSeconds: 5, connectTimeoutInSeconds: 2,
    }), T, 'invokeMethod child1');
    assert.equal(res.status, 200);
    assert.deepEqual(res.payload, { rebootedBy: 'child1', got: payload });
    assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);
  });

  it('moduleA invokes a direct method on moduleB (module to module)', async () => {
    const res = await withTimeout(moduleA.invokeMethod(EDGE, 'moduleB', {
      methodName: 'ping', payload: 'hello', responseTimeoutInSeconds: 5, connectTimeoutInSeconds: 2,
    }), T, 'invokeMethod moduleB');
    assert.equal(res.status, 201);
    assert.deepEqual(res.payload, { pong: 'hello' });
  });

  it('invokeMethod reports a target that is offline or out of scope as 404', async () => {
    // child2 is connected but never subscribed to methods.
    const params = { methodName: 'reboot', payload: null, responseTimeoutInSeconds: 5, connectTimeoutInSeconds: 0 };
    const offline = await withTimeout(moduleA.invokeMethod('child2', params).then(() => null, (e) => e),
      T, 'invokeMethod child2');
    assert.ok(offline, 'invokeMethod on a target without a method subscription succeeded');
    assert.equal(offline.response?.statusCode, 404, `${offline}`);
    assert.match(String(offline.responseBody), /DeviceNotOnline/);

    const outside = await withTimeout(moduleA.invokeMethod('not-a-child', params).then(() => null, (e) => e),
      T, 'invokeMethod not-a-child');
    assert.ok(outside, 'invokeMethod outside the edge scope succeeded');
    assert.equal(outside.response?.statusCode, 404, `${outside}`);
    assert.equal(outside.name, 'DeviceNotFoundError', `${outside}: ${outside.responseBody}`);
  });

  it('invokeMethod reports a target that does not answer in time as 504', async () => {
    const started = Date.now();
    const err = await withTimeout(moduleA.invokeMethod('child1', {
      methodName: 'hang', payload: {}, responseTimeoutInSeconds: 1, connectTimeoutInSeconds: 1,
    }).then(() => null, (e) => e), T, 'invokeMethod child1 hang');
    assert.ok(err, 'invokeMethod on a method that never answers succeeded');
    assert.equal(err.response?.statusCode, 504, `${err}`);
    assert.match(String(err.responseBody), /GatewayTimeout/);
    const took = Date.now() - started;
    assert.ok(took >= 900 && took < 4000, `answered after ${took} ms, want about 1 s`);
  });

  it('child1 reads its twin and patches reported properties offline, answered at once', async () => {
    const twin = await withTimeout(child1.getTwin(), T, 'child1 getTwin offline');
    const marker = uniqueId('rep');
    const started = Date.now();
    await withTimeout(reportedUpdate(twin, { offlineMarker: marker }), T, 'reported update offline');
    const took = Date.now() - started;
    assert.ok(took < 1000, `reported patch took ${took} ms offline`);
    // The cache holds the edge's merged view: a new GET sees the patch.
    const again = await withTimeout(child1.getTwin(), T, 'child1 getTwin after patch');
    assert.equal(again.properties.reported.offlineMarker, marker);

    // Once the link is back, the held patch reaches the hub.
    await proxy.restore();
    await waitFor(async () => {
      const t = (await hub.registry().getTwin('child1')).responseBody;
      return t.properties.reported.offlineMarker === marker;
    }, { timeout: 20000, interval: 200, what: 'the held reported patch at the hub' });
  });
});
