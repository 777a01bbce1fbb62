'use strict';
// A device authenticated by a self-signed X.509 certificate (registered
// by thumbprint), generated here with openssl.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const {
  Hub, Message, withTimeout, uniqueId, openClient, closeClient, bodyIs,
} = require('./harness');

const T = 15000;

/** A self-signed EC certificate with CN=cn, made by openssl. */
function selfSigned(cn) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-x509-'));
  try {
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
      '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', `/CN=${cn}`], { stdio: 'pipe', timeout: 10000 });
    return { cert: fs.readFileSync(cert, 'utf8'), key: fs.readFileSync(key, 'utf8') };
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Hex thumbprint the way Azure shows it (no colons). */
function thumbprint(pem, alg) {
  const c = new crypto.X509Certificate(pem);
  return (alg === 'sha256' ? c.fingerprint256 : c.fingerprint).replace(/:/g, '');
}

describe('X.509 self-signed device', { timeout: 90000 }, () => {
  let hub;
  let registry;

  before(async () => {
    hub = await Hub.start();
    registry = hub.registry();
  });

  after(async () => {
    if (hub) await hub.stop();
  });

  for (const [transport, alg] of [['mqtt', 'sha1'], ['mqttws', 'sha256'], ['http', 'sha1']]) {
    it(`connects over ${transport} with a ${alg} thumbprint and sends telemetry`, async () => {
      const deviceId = uniqueId(`x509-${transport}`);
      const { cert, key } = selfSigned(deviceId);
      const created = (await registry.create({
        deviceId,
        authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: thumbprint(cert, alg) } },
      })).responseBody;
      assert.equal(created.authentication.type, 'selfSigned');

      const client = await openClient(hub, { transport, deviceId, cert, privateKey: key });
      try {
        const msg = new Message(`x509 ${transport}`);
        msg.messageId = uniqueId('x509-mid');
        await withTimeout(client.sendEvent(msg), T, 'sendEvent');
        const ev = await hub.monitorEvent(deviceId, (e) => e.systemProperties?.messageId === msg.messageId);
        assert.equal(ev.systemProperties.connectionDeviceId, deviceId);
        assert.ok(bodyIs(ev, `x509 ${transport}`));
      } finally {
        await closeClient(client);
      }
    });
  }

  it('refuses a certificate whose thumbprint is not registered', async () => {
    const deviceId = uniqueId('x509-wrong');
    const registered = selfSigned(deviceId);
    const other = selfSigned(deviceId);
    await registry.create({
      deviceId,
      authentication: { type: 'selfSigned', x509Thumbprint: { primaryThumbprint: thumbprint(registered.cert, 'sha1') } },
    });
    let client;
    await assert.rejects(async () => {
      client = await openClient(hub, { transport: 'mqtt', deviceId, cert: other.cert, privateKey: other.key });
    }, (err) => {
      assert.doesNotMatch(err.message, /timed out|ECONNREFUSED|serves no MQTT/, 'refused by the hub, not unreachable');
      return true;
    });
    await closeClient(client);
    // The registered certificate connects, so the refusal was about the cert.
    const ok = await openClient(hub, { transport: 'mqtt', deviceId, cert: registered.cert, privateKey: registered.key });
    await closeClient(ok);
  });
});
