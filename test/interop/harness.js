'use strict';
// Shared helpers for the interop suite: start a fresh `outpost hub` on
// random loopback ports, point the real Azure IoT SDKs at it, and drive the
// outpost CLI. Everything is bounded in time; nothing sleeps to wait for a
// condition, it polls against a deadline instead.

const { spawn, execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const https = require('node:https');
const net = require('node:net');
const readline = require('node:readline');

const iothub = require('azure-iothub');
const device = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const { Http } = require('azure-iot-device-http');
// azure-iot-common is not pinned here; take the copy azure-iot-device uses.
const { NoRetry } = require(require.resolve('azure-iot-common', { paths: [path.dirname(require.resolve('azure-iot-device'))] }));

const BIN = process.env.OUTPOST_BIN || path.join(__dirname, 'bin', 'outpost');

// Keep this much of a child's stderr for diagnostics.
const LOG_TAIL = 64 * 1024;

/**
 * Rejects after ms with a message naming what was awaited, so a hung SDK
 * call fails the test with a reason instead of hanging the run.
 */
function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls fn until it returns a truthy value or the deadline passes. */
async function waitFor(fn, { timeout = 10000, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let lastErr;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}` +
        (lastErr ? `: last error: ${lastErr.message}` : ''));
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * An event queue: push from SDK callbacks, await next(predicate) in the
 * test. It avoids racing a listener against the action that triggers it.
 */
class Inbox {
  constructor() {
    this.items = [];
    this.waiters = [];
  }

  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) {
      const i = this.items.findIndex(w.pred);
      if (i >= 0) {
        const [hit] = this.items.splice(i, 1);
        this.waiters.splice(this.waiters.indexOf(w), 1);
        w.resolve(hit);
      }
    }
  }

  next(pred = () => true, ms = 10000, what = 'event') {
    const i = this.items.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.items.splice(i, 1)[0]);
    return withTimeout(new Promise((resolve) => {
      this.waiters.push({ pred, resolve });
    }), ms, what).catch((err) => {
      this.waiters = this.waiters.filter((w) => w.pred !== pred);
      throw err;
    });
  }
}

/**
 * An https.Agent that sends every connection to 127.0.0.1:port while
 * verifying the server as "localhost".
 *
 * The SDKs cannot be told a port for HTTPS: device HTTP and MQTT over
 * WebSocket always dial 443, and the service SDK passes "localhost:PORT"
 * as the bare host to https.request, which fails DNS. Rewriting the
 * connection in the agent keeps the SDK's requests (path, Host header,
 * auth) exactly as they are and only changes where the socket goes.
 */
class RedirectAgent extends https.Agent {
  constructor({ port, ca, cert, key }) {
    // Node merges an agent's own options over each request's, so leave
    // out what is unset rather than overriding it with undefined.
    const tls = Object.fromEntries(Object.entries({ ca, cert, key }).filter(([, v]) => v !== undefined));
    super({ ...tls, keepAlive: false });
    this.target = port;
    this.defaultPort = port;
  }

  createConnection(options, cb) {
    return super.createConnection({
      ...options,
      host: '127.0.0.1',
      port: this.target,
      servername: 'localhost',
    }, cb);
  }
}

/**
 * A running hub: `outpost hub` as a subprocess with its own data dir and
 * random ports. Call stop() when done (start() registers nothing global).
 */
/**
 * An outpost subprocess (hub or edge) that owns a temporary folder: it keeps
 * the tail of stderr, and stop() ends it (SIGTERM, then SIGKILL after 10 s)
 * and removes the folder.
 */
class OutpostProcess {
  constructor(proc, dir, what) {
    this.proc = proc;
    this.dir = dir;
    this.what = what;
    this.stderr = '';
    proc.stderr.on('data', (d) => {
      this.stderr = (this.stderr + d.toString()).slice(-LOG_TAIL);
    });
    this.exited = new Promise((resolve) => proc.once('exit', resolve));
  }

  log() {
    return this.stderr;
  }

  async stop() {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      this.proc.kill('SIGTERM');
      try {
        await withTimeout(this.exited, 10000, `outpost ${this.what} shutdown`);
      } catch {
        this.proc.kill('SIGKILL');
        await this.exited;
      }
    }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

class Hub extends OutpostProcess {
  static async start({ readyTimeout = 30000 } = {}) {
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-interop-'));
    const proc = spawn(BIN, [
      'hub', '--data-dir', dataDir,
      '--https-addr', '127.0.0.1:0',
      '--mqtt-addr', '127.0.0.1:0',
      // Edges here run as "localhost", on the hub's machine.
      '--edge-loopback-names',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const hub = new Hub(proc, dataDir);
    const ready = await withTimeout(new Promise((resolve, reject) => {
      const rl = readline.createInterface({ input: proc.stdout });
      rl.on('line', (line) => {
        const m = /^hub ready: https=(\S+) mqtt=(\S+)$/.exec(line);
        if (m) resolve(m);
      });
      proc.once('exit', (code, sig) => reject(new Error(
        `outpost hub exited (${code ?? sig}) before ready:\n${hub.log()}`)));
      proc.once('error', reject);
    }), readyTimeout, 'outpost hub ready line').catch(async (err) => {
      await hub.stop();
      throw err;
    });
    hub.httpsAddr = ready[1];
    hub.httpsPort = portOf(ready[1]);
    hub.mqttAddr = ready[2] === 'off' ? null : ready[2];
    hub.mqttPort = hub.mqttAddr ? portOf(hub.mqttAddr) : null;
    hub.serviceConnectionString = fs.readFileSync(path.join(dataDir, 'service-connection-string'), 'utf8').trim();
    hub.caFile = path.join(dataDir, 'ca.pem');
    hub.ca = fs.readFileSync(hub.caFile, 'utf8');
    hub.hostName = /(?:^|;)HostName=([^;]+)/.exec(hub.serviceConnectionString)[1];
    return hub;
  }

  constructor(proc, dataDir) {
    super(proc, dataDir, 'hub');
    this.dataDir = dataDir;
  }

  /** An agent that reaches the HTTPS listener, for the SDKs' REST calls. */
  httpsAgent(extra = {}) {
    return new RedirectAgent({ port: this.httpsPort, ca: this.ca, ...extra });
  }

  /**
   * The service SDK's Registry. azure-iothub has no public setOptions on
   * Registry (it always talks to a public-CA hub on 443), so the CA and
   * the port go into its REST client's options directly.
   */
  registry() {
    const reg = iothub.Registry.fromConnectionString(this.serviceConnectionString);
    reg._restApiClient.setOptions({ ca: this.ca, http: { agent: this.httpsAgent() } });
    return reg;
  }

  /**
   * The service SDK's Client. fromConnectionString constructs (but does
   * not connect) an AMQP transport; invokeDeviceMethod is REST only.
   */
  serviceClient() {
    const client = iothub.Client.fromConnectionString(this.serviceConnectionString);
    client._restApiClient.setOptions({ ca: this.ca, http: { agent: this.httpsAgent() } });
    return client;
  }

  /**
   * A device (or module) connection string. gateway is a host[:port] for
   * GatewayHostName, or omitted.
   */
  connectionString({ deviceId, moduleId, key, x509, gateway }) {
    let cs = `HostName=${this.hostName};DeviceId=${deviceId}`;
    if (moduleId) cs += `;ModuleId=${moduleId}`;
    cs += x509 ? ';x509=true' : `;SharedAccessKey=${key}`;
    if (gateway) cs += `;GatewayHostName=${gateway}`;
    return cs;
  }

  /** Environment for the outpost admin CLI. */
  cliEnv() {
    return {
      ...process.env,
      OUTPOST_HUB_CONNECTION_STRING: this.serviceConnectionString,
      OUTPOST_CA: this.caFile,
    };
  }

  /** Runs an outpost CLI command to completion; resolves with stdout. */
  cli(args, { timeout = 20000 } = {}) {
    return new Promise((resolve, reject) => {
      execFile(BIN, args, { env: this.cliEnv(), timeout }, (err, stdout, stderr) => {
        if (err) {
          err.message = `outpost ${args.join(' ')}: ${err.message}\nstdout: ${stdout}\nstderr: ${stderr}`;
          reject(err);
          return;
        }
        resolve(stdout);
      });
    });
  }

  /**
   * Runs `outpost monitor-events -o json --from-start` for a device and
   * resolves with the first event that satisfies pred, then ends the
   * monitor. Rejects if the monitor exits or the deadline passes first.
   */
  monitorEvent(deviceId, pred, { timeout = 15000 } = {}) {
    const args = ['monitor-events', '-o', 'json', '--device-id', deviceId,
      '--from-start', '--timeout', String(Math.ceil(timeout / 1000))];
    const proc = spawn(BIN, args, { env: this.cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    const seen = [];
    proc.stderr.on('data', (d) => { stderr = (stderr + d.toString()).slice(-LOG_TAIL); });
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    const found = new Promise((resolve, reject) => {
      const rl = readline.createInterface({ input: proc.stdout });
      rl.on('line', (line) => {
        if (!line.trim()) return;
        let ev;
        try {
          ev = JSON.parse(line);
        } catch (err) {
          reject(new Error(`monitor-events printed a non-JSON line: ${line}`));
          return;
        }
        seen.push(ev);
        if (pred(ev)) resolve(ev);
      });
      proc.once('error', reject);
      exited.then((code) => reject(new Error(
        `monitor-events exited (${code}) without a matching event; saw ${JSON.stringify(seen)}\nstderr: ${stderr}`)));
    });
    return withTimeout(found, timeout + 5000, `monitor-events event for ${deviceId}`).finally(async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await withTimeout(exited, 5000, 'monitor-events exit').catch(() => proc.kill('SIGKILL'));
    });
  }
}

/**
 * A TCP proxy on a random loopback port that pipes every connection to
 * 127.0.0.1:targetPort, and that a test can cut: cut() closes the
 * listener and destroys every open socket, so the far side sees its
 * connection reset and later dials are refused. It stands for an edge's
 * upstream network link.
 */
class CuttableProxy {
  static async start(targetPort) {
    const p = new CuttableProxy(targetPort);
    await p.listen(0);
    return p;
  }

  constructor(targetPort) {
    this.targetPort = targetPort;
    this.sockets = new Set();
    this.server = null;
    this.port = null;
    this.accepted = 0;
  }

  listen(port) {
    const server = net.createServer((down) => {
      this.accepted += 1;
      const up = net.connect(this.targetPort, '127.0.0.1');
      for (const s of [down, up]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => { down.destroy(); up.destroy(); });
      }
      down.pipe(up);
      up.pipe(down);
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        this.port = server.address().port;
        resolve();
      });
    });
  }

  /** Whether the link is up (the listener is open). */
  get up() {
    return this.server !== null;
  }

  /** Cuts the link: no new connections, every open one reset. */
  async cut() {
    const server = this.server;
    this.server = null;
    if (server) {
      const closed = new Promise((resolve) => server.close(resolve));
      for (const s of this.sockets) s.destroy();
      this.sockets.clear();
      await closed;
    }
  }

  /** Restores the link on the same port. */
  async restore() {
    if (!this.server) await this.listen(this.port);
  }
}

/**
 * A running edge: `outpost edge` as a subprocess with its own storage
 * and state folders and random listeners. start() resolves once the
 * edge printed its ready line, which it does only after its first sync
 * with the hub. Call stop() when done.
 */
class Edge extends OutpostProcess {
  static async start(hub, { connectionString, upstreamPort, readyTimeout = 30000 } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-interop-edge-'));
    const args = [
      'edge', '--connection-string', connectionString,
      '--storage-folder', path.join(dir, 'storage'),
      '--state-dir', path.join(dir, 'state'),
      '--hub-ca', hub.caFile,
      '--hostname', 'localhost',
      '--mqtt-addr', '127.0.0.1:0',
      '--https-addr', '127.0.0.1:0',
    ];
    if (upstreamPort) args.push('--upstream-addr', `127.0.0.1:${upstreamPort}`);
    const env = { ...process.env };
    delete env.storageFolder; // the flag wins anyway; keep the run independent of it
    const proc = spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    const edge = new Edge(proc, dir, hub);
    const ready = await withTimeout(new Promise((resolve, reject) => {
      const rl = readline.createInterface({ input: proc.stdout });
      rl.on('line', (line) => {
        const m = /^edge ready: mqtt=(\S+) https=(\S+)$/.exec(line);
        if (m) resolve(m);
      });
      proc.once('exit', (code, sig) => reject(new Error(
        `outpost edge exited (${code ?? sig}) before ready:\n${edge.log()}`)));
      proc.once('error', reject);
    }), readyTimeout, 'outpost edge ready line').catch(async (err) => {
      err.message += `\nedge log:\n${edge.log()}`;
      await edge.stop();
      throw err;
    });
    edge.mqttPort = portOf(ready[1]);
    edge.httpsPort = portOf(ready[2]);
    return edge;
  }

  constructor(proc, dir, hub) {
    super(proc, dir, 'edge');
    this.hub = hub;
  }

  /** GatewayHostName for MQTT clients of this edge. */
  get gateway() {
    return `localhost:${this.mqttPort}`;
  }

  /**
   * An agent that reaches the edge's HTTPS listener. The edge's server
   * certificate chains to the hub's root CA (the hub signs the edge CA).
   */
  httpsAgent() {
    return new RedirectAgent({ port: this.httpsPort, ca: this.hub.ca });
  }

  /** GET /status (loopback callers need no credentials). */
  status() {
    return new Promise((resolve, reject) => {
      const req = https.get({
        host: 'localhost', path: '/status', agent: this.httpsAgent(), timeout: 5000,
      }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d) => { body += d; });
        res.on('end', () => {
          if (res.statusCode !== 200) {
            reject(new Error(`GET /status: ${res.statusCode} ${body}`));
            return;
          }
          try {
            resolve(JSON.parse(body));
          } catch (err) {
            reject(err);
          }
        });
      });
      req.on('timeout', () => req.destroy(new Error('GET /status timed out')));
      req.on('error', reject);
    });
  }

  /** SIGTERM, then SIGKILL if the edge has not exited within 10 s. */
}

/**
 * Transports, and how each reaches the random ports:
 * - Mqtt dials mqtts://{GatewayHostName || HostName}: the hub's HostName
 *   carries the HTTPS port, so GatewayHostName=localhost:MQTTPORT.
 * - MqttWs dials wss://{GatewayHostName || HostName}:443/$iothub/websocket;
 *   a port in the host breaks that URL (url.parse reads
 *   "wss://localhost:P:443/$iothub/websocket" as port 443, path
 *   "/:P/$iothub/websocket"), so GatewayHostName=localhost and an agent
 *   (options.mqtt.webSocketAgent) that moves the socket to the HTTPS port.
 * - Http calls https.request with host=HostName ("localhost:P", which
 *   fails DNS) and port 443, so options.http.agent moves the socket.
 */
const TRANSPORTS = {
  mqtt: {
    name: 'MQTT',
    ctor: Mqtt,
    gateway: (hub) => `localhost:${hub.mqttPort}`,
    options: () => ({}),
  },
  mqttws: {
    name: 'MQTT over WebSocket',
    ctor: MqttWs,
    gateway: () => 'localhost',
    options: (hub, tls) => ({ mqtt: { webSocketAgent: hub.httpsAgent(tls) } }),
  },
  http: {
    name: 'HTTPS',
    ctor: Http,
    gateway: () => undefined,
    options: (hub, tls) => ({ http: { agent: hub.httpsAgent(tls), receivePolicy: { interval: 1 } } }),
  },
};

/**
 * Opens a device or module client over transport ('mqtt', 'mqttws',
 * 'http'). With cert and key it is an X.509 client. Retries are off so a
 * failure surfaces at once instead of after minutes of backoff.
 */
async function openClient(hub, { transport, deviceId, moduleId, key, cert, privateKey, open = true }) {
  const tr = TRANSPORTS[transport];
  const x509 = Boolean(cert);
  if (transport !== 'http' && !hub.mqttPort) throw new Error('the hub serves no MQTT (its ready line says mqtt=off)');
  const gateway = tr.gateway(hub);
  const cs = hub.connectionString({ deviceId, moduleId, key, x509, gateway });
  const Ctor = moduleId ? device.ModuleClient : device.Client;
  let client;
  if (x509 && gateway) {
    // Client.fromConnectionString drops GatewayHostName for x509=true
    // (it builds X509AuthenticationProvider from HostName and DeviceId
    // only), which would send MQTT to the HTTPS port. The same provider,
    // built with the gateway, goes through the public
    // fromAuthenticationProvider instead.
    const provider = new device.X509AuthenticationProvider({
      host: hub.hostName, deviceId, gatewayHostName: gateway, x509: { cert, key: privateKey },
    });
    client = Ctor.fromAuthenticationProvider(provider, tr.ctor);
  } else {
    client = Ctor.fromConnectionString(cs, tr.ctor);
  }
  client.setRetryPolicy(new NoRetry());
  const tls = x509 ? { cert, key: privateKey } : {};
  const opts = { ca: hub.ca, ...tr.options(hub, tls) };
  if (x509) Object.assign(opts, { cert, key: privateKey });
  await withTimeout(client.setOptions(opts), 5000, 'setOptions');
  client.on('error', () => {}); // surfaced through the calls under test
  if (open) await withTimeout(client.open(), 15000, `open ${transport} client ${deviceId}${moduleId ? '/' + moduleId : ''}`);
  return client;
}

/** Closes an SDK client, bounded in time; never throws. */
async function closeClient(client) {
  if (!client) return;
  await withTimeout(client.close(), 5000, 'close client').catch(() => {});
}

/**
 * Whether a monitor-events body is text. DESIGN.md does not fix the
 * encoding of "body": accept the text itself, its base64, or, for a JSON
 * payload, the decoded JSON value (as `az iot hub monitor-events` shows it).
 */
function bodyIs(ev, text) {
  if (ev.body === text) return true;
  if (typeof ev.body === 'string' && Buffer.from(ev.body, 'base64').toString('utf8') === text) return true;
  if (ev.body !== null && typeof ev.body === 'object') {
    try {
      return require('node:util').isDeepStrictEqual(ev.body, JSON.parse(text));
    } catch {
      return false;
    }
  }
  return false;
}

function portOf(addr) {
  const i = addr.lastIndexOf(':');
  return Number(addr.slice(i + 1));
}

/** Creates a SAS device through the service SDK; resolves with its primary key. */
async function createSasDevice(registry, deviceId) {
  const res = await registry.create({ deviceId, status: 'enabled' });
  const key = res.responseBody.authentication.symmetricKey.primaryKey;
  if (!key) throw new Error(`hub generated no key for ${deviceId}`);
  return key;
}

let seq = 0;
/** A device id unique within this run. */
function uniqueId(prefix) {
  seq += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${seq}`;
}

module.exports = {
  Hub, Edge, CuttableProxy, Inbox, RedirectAgent, TRANSPORTS, withTimeout, waitFor, createSasDevice, uniqueId,
  openClient, closeClient, bodyIs, Message: device.Message, NoRetry,
};
