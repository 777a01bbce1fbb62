'use strict';
// A module written with azure-iot-device's ModuleClient, over MQTT: an
// output event must reach the telemetry stream with its module id and
// output name.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const {
  Hub, Message, withTimeout, uniqueId, openClient, closeClient, bodyIs,
} = require('./harness');

const T = 15000;

describe('module over MQTT', { timeout: 90000 }, () => {
  let hub;
  let deviceId;
  let client;

  before(async () => {
    hub = await Hub.start();
    const registry = hub.registry();
    deviceId = uniqueId('dev-mod');
    await registry.create({ deviceId });
    const mod = (await registry.addModule({ deviceId, moduleId: 'filter' })).responseBody;
    client = await openClient(hub, {
      transport: 'mqtt', deviceId, moduleId: 'filter', key: mod.authentication.symmetricKey.primaryKey,
    });
  });

  after(async () => {
    await closeClient(client);
    if (hub) await hub.stop();
  });

  it('sends an output event that carries the module id and output name', async () => {
    const text = JSON.stringify({ t: 22.5 });
    const msg = new Message(text);
    msg.messageId = uniqueId('mod-mid');
    msg.contentType = 'application/json';
    msg.properties.add('stage', 'filtered');
    await withTimeout(client.sendOutputEvent('out1', msg), T, 'sendOutputEvent');

    const ev = await hub.monitorEvent(deviceId, (e) => e.systemProperties?.messageId === msg.messageId);
    assert.equal(ev.deviceId, deviceId);
    assert.equal(ev.moduleId, 'filter');
    assert.equal(ev.systemProperties.outputName, 'out1');
    assert.equal(ev.systemProperties.connectionDeviceId, deviceId);
    assert.equal(ev.systemProperties.connectionModuleId, 'filter');
    assert.equal(ev.properties.stage, 'filtered');
    assert.ok(bodyIs(ev, text), `body ${JSON.stringify(ev.body)}`);
  });

  it('reads its module twin and patches reported properties', async () => {
    const twin = await withTimeout(client.getTwin(), T, 'module getTwin');
    await withTimeout(new Promise((resolve, reject) => {
      twin.properties.reported.update({ ready: true }, (err) => (err ? reject(err) : resolve()));
    }), T, 'module reported update');
    const svc = (await hub.registry().getModuleTwin(deviceId, 'filter')).responseBody;
    assert.equal(svc.properties.reported.ready, true);
  });
});
