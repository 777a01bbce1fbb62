'use strict';
// A device written with azure-iot-device over azure-iot-device-http:
// telemetry, and C2D receive and complete (the SDK polls
// GET /devices/{d}/messages/devicebound and settles with DELETE).

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const {
  Hub, Inbox, Message, withTimeout, createSasDevice, uniqueId, openClient, closeClient, bodyIs,
} = require('./harness');

const T = 15000;

describe('device over HTTPS', { timeout: 90000 }, () => {
  let hub;
  let deviceId;
  let client;
  let inbox; // every C2D message the device receives, in order

  before(async () => {
    hub = await Hub.start();
    const registry = hub.registry();
    deviceId = uniqueId('dev-http');
    const key = await createSasDevice(registry, deviceId);
    client = await openClient(hub, { transport: 'http', deviceId, key });
    inbox = new Inbox();
    client.on('message', (m) => inbox.push(m));
  });

  after(async () => {
    await closeClient(client);
    if (hub) await hub.stop();
  });

  it('sends telemetry with a message id and application properties', async () => {
    const text = `hello over https ${Date.now()}`;
    const msg = new Message(text);
    msg.messageId = uniqueId('mid');
    msg.correlationId = 'corr-http';
    msg.properties.add('temperature', '19');
    msg.properties.add('unit', 'celsius');
    await withTimeout(client.sendEvent(msg), T, 'sendEvent');

    const ev = await hub.monitorEvent(deviceId, (e) => e.systemProperties?.messageId === msg.messageId);
    assert.equal(ev.deviceId, deviceId);
    assert.ok(bodyIs(ev, text), `body ${JSON.stringify(ev.body)} is ${JSON.stringify(text)}`);
    assert.equal(ev.properties.temperature, '19');
    assert.equal(ev.properties.unit, 'celsius');
    assert.equal(ev.systemProperties.correlationId, 'corr-http');
    assert.equal(ev.systemProperties.connectionDeviceId, deviceId);
  });

  it('sends a telemetry batch', async () => {
    // azure-iot-device-http's sendEventBatch serialises only each body and
    // its application properties (no message id), so match on a property.
    const tag = uniqueId('batch');
    const msgs = [0, 1].map((i) => {
      const m = new Message(`batch ${i}`);
      m.properties.add('batch', tag);
      m.properties.add('i', String(i));
      return m;
    });
    await withTimeout(client.sendEventBatch(msgs), T, 'sendEventBatch');
    for (const i of [0, 1]) {
      const ev = await hub.monitorEvent(deviceId, (e) => e.properties?.batch === tag && e.properties?.i === String(i));
      assert.ok(bodyIs(ev, `batch ${i}`), `body of batch message ${i}`);
      assert.equal(ev.systemProperties.connectionDeviceId, deviceId);
      for (const k of Object.keys(ev.properties)) {
        assert.ok(!k.startsWith('iothub-app-'), `header prefix left on property ${k}`);
      }
    }
  });

  it('receives a C2D message and completes it', async () => {
    const data = uniqueId('c2d-http');
    await hub.cli(['c2d-message', 'send', '--device-id', deviceId, '--data', data, '--props', 'color=red']);
    const m = await inbox.next((x) => x.data.toString() === data, T, 'C2D over HTTPS');
    assert.ok(m.lockToken, 'the ETag became the lock token');
    assert.ok(m.messageId, 'iothub-messageid header');
    // azure-iot-device-http keeps the whole header name as the key.
    assert.equal(m.properties.getValue('iothub-app-color'), 'red');
    await withTimeout(client.complete(m), T, 'complete (DELETE …/devicebound/{lock})');

    // Completed means gone: the next message the device gets is a new one.
    const data2 = uniqueId('c2d-http');
    await hub.cli(['c2d-message', 'send', '--device-id', deviceId, '--data', data2]);
    const m2 = await inbox.next(() => true, T, 'second C2D over HTTPS');
    assert.equal(m2.data.toString(), data2);
    await withTimeout(client.complete(m2), T, 'complete second');
  });

  it('rejects a C2D message', async () => {
    const data = uniqueId('c2d-rej');
    await hub.cli(['c2d-message', 'send', '--device-id', deviceId, '--data', data]);
    const m = await inbox.next((x) => x.data.toString() === data, T, 'C2D to reject');
    await withTimeout(client.reject(m), T, 'reject');
    const data2 = uniqueId('c2d-after');
    await hub.cli(['c2d-message', 'send', '--device-id', deviceId, '--data', data2]);
    const m2 = await inbox.next(() => true, T, 'C2D after reject');
    assert.equal(m2.data.toString(), data2, 'a rejected message is not redelivered');
    await withTimeout(client.complete(m2), T, 'complete');
  });
});
