'use strict';
// The service SDK (azure-iothub) against Outpost's REST API: registry
// CRUD, twins, paged queries and direct-method errors.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');

const { Hub, withTimeout, uniqueId } = require('./harness');

const T = 15000; // per SDK call

describe('service SDK (azure-iothub)', { timeout: 90000 }, () => {
  let hub;
  let registry;

  before(async () => {
    hub = await Hub.start();
    registry = hub.registry();
  });

  after(async () => {
    if (hub) await hub.stop();
  });

  it('creates, gets and deletes a device', async () => {
    const id = uniqueId('svc-crud');
    const created = (await withTimeout(registry.create({ deviceId: id }), T, 'create')).responseBody;
    assert.equal(created.deviceId, id);
    assert.ok(created.etag, 'created device has an etag');
    assert.equal(created.authentication.type, 'sas');
    assert.ok(created.authentication.symmetricKey.primaryKey, 'hub generated a primary key');
    assert.ok(created.authentication.symmetricKey.secondaryKey, 'hub generated a secondary key');

    const got = (await withTimeout(registry.get(id), T, 'get')).responseBody;
    assert.equal(got.deviceId, id);
    assert.equal(got.status, 'enabled');
    assert.equal(got.authentication.symmetricKey.primaryKey, created.authentication.symmetricKey.primaryKey);

    await assert.rejects(registry.create({ deviceId: id }), (err) => {
      assert.equal(err.name, 'DeviceAlreadyExistsError');
      return true;
    });

    await withTimeout(registry.delete(id), T, 'delete');
    await assert.rejects(registry.get(id), (err) => {
      assert.equal(err.name, 'DeviceNotFoundError');
      return true;
    });
  });

  // Registry.list requests GET /devices/ (with the trailing slash).
  it('lists devices with Registry.list (GET /devices/)', async () => {
    const id = uniqueId('svc-list');
    await registry.create({ deviceId: id });
    const list = (await withTimeout(registry.list(), T, 'list')).responseBody;
    assert.ok(Array.isArray(list), 'list is an array');
    assert.ok(list.some((d) => d.deviceId === id), 'list contains the device');
  });

  it('updates a device with Registry.update (If-Match: "*")', async () => {
    const id = uniqueId('svc-upd');
    await registry.create({ deviceId: id });
    const got = (await registry.get(id)).responseBody;
    const upd = (await withTimeout(registry.update({
      deviceId: id, status: 'disabled', statusReason: 'interop',
      authentication: got.authentication,
    }), T, 'update')).responseBody;
    assert.equal(upd.status, 'disabled');
    assert.notEqual(upd.etag, got.etag, 'etag changes on update');
    assert.equal((await registry.get(id)).responseBody.status, 'disabled');
    // The same key survives an update that passes it back.
    assert.equal(upd.authentication.symmetricKey.primaryKey, got.authentication.symmetricKey.primaryKey);
  });

  it('updates a twin with updateTwin(id, patch, "*")', async () => {
    const id = uniqueId('svc-twin-any');
    await registry.create({ deviceId: id });
    const t = (await withTimeout(registry.updateTwin(id, { tags: { any: true } }, '*'), T, 'updateTwin *')).responseBody;
    assert.equal(t.tags.any, true);
  });

  it('creates and deletes a module', async () => {
    const id = uniqueId('svc-mod');
    await registry.create({ deviceId: id });
    const mod = (await withTimeout(registry.addModule({ deviceId: id, moduleId: 'm1' }), T, 'addModule')).responseBody;
    assert.equal(mod.moduleId, 'm1');
    assert.ok(mod.authentication.symmetricKey.primaryKey, 'module key generated');
    const mods = (await withTimeout(registry.getModulesOnDevice(id), T, 'getModulesOnDevice')).responseBody;
    assert.deepEqual(mods.map((m) => m.moduleId), ['m1']);
    await withTimeout(registry.removeModule(id, 'm1'), T, 'removeModule');
    await assert.rejects(registry.getModule(id, 'm1'));
  });

  it('gets a twin and updates it with twin.update (tags and desired)', async () => {
    const id = uniqueId('svc-twin');
    await registry.create({ deviceId: id });
    const twin = (await withTimeout(registry.getTwin(id), T, 'getTwin')).responseBody;
    assert.equal(twin.deviceId, id);
    assert.ok(twin.etag, 'twin has an etag');
    assert.ok(twin.properties.desired, 'twin has desired properties');
    assert.ok(twin.properties.reported, 'twin has reported properties');
    const v0 = twin.properties.desired.$version;

    const etag0 = twin.etag;
    await withTimeout(twin.update({
      tags: { site: 'lab', floor: 3 },
      properties: { desired: { interval: 5, nested: { a: 1 } } },
    }), T, 'twin.update');
    assert.notEqual(twin.etag, etag0, 'twin.update refreshed the etag');
    assert.equal(twin.tags.site, 'lab');
    assert.equal(twin.properties.desired.interval, 5);

    const again = (await registry.getTwin(id)).responseBody;
    assert.deepEqual(again.tags, { site: 'lab', floor: 3 });
    assert.equal(again.properties.desired.interval, 5);
    assert.deepEqual(again.properties.desired.nested, { a: 1 });
    assert.equal(again.properties.desired.$version, v0 + 1);

    // A null removes a desired property; updateTwin with a stale etag fails.
    await registry.updateTwin(id, { properties: { desired: { nested: null } } }, again.etag);
    const third = (await registry.getTwin(id)).responseBody;
    assert.equal(third.properties.desired.nested, undefined);
    await assert.rejects(registry.updateTwin(id, { tags: { x: 1 } }, again.etag), (err) => {
      assert.equal(err.name, 'InvalidEtagError');
      return true;
    });
  });

  it('pages query results with createQuery and continuation tokens', async () => {
    const tag = uniqueId('q');
    const ids = [];
    for (let i = 0; i < 7; i++) {
      const id = `${tag}-${i}`;
      ids.push(id);
      await registry.create({ deviceId: id });
      const tw = (await registry.getTwin(id)).responseBody;
      await tw.update({ tags: { batch: tag, n: i } });
    }
    const sql = `SELECT * FROM devices WHERE tags.batch = '${tag}'`;

    // nextAsTwin: 3 + 3 + 1, continuation carried by the Query object.
    const q = registry.createQuery(sql, 3);
    const pages = [];
    const seen = [];
    while (q.hasMoreResults) {
      const res = await withTimeout(q.nextAsTwin(), T, 'nextAsTwin');
      // Query and method calls resolve with {result, message}, registry
      // calls with {responseBody, httpResponse}.
      pages.push(res.result.length);
      for (const tw of res.result) {
        assert.equal(typeof tw.update, 'function', 'nextAsTwin yields Twin objects');
        seen.push(tw.deviceId);
      }
      assert.ok(pages.length <= 5, 'query terminates');
    }
    assert.deepEqual(pages, [3, 3, 1]);
    assert.deepEqual([...seen].sort(), [...ids].sort());

    // next with an explicit continuation token gives the same pages.
    const q2 = registry.createQuery(sql, 4);
    const p1 = await q2.next();
    assert.equal(p1.result.length, 4);
    const token = q2.continuationToken;
    assert.ok(token, 'a continuation token after a partial page');
    const p2 = await registry.createQuery(sql, 4).next(token);
    assert.equal(p2.result.length, 3);
    assert.equal(p2.message.headers['x-ms-continuation'], undefined, 'no continuation on the last page');
    const all = [...p1.result, ...p2.result].map((d) => d.deviceId).sort();
    assert.deepEqual(all, [...ids].sort());

    // Projections and aggregates come back as plain rows.
    const cnt = await registry.createQuery(`SELECT COUNT() AS n FROM devices WHERE tags.batch = '${tag}'`).next();
    assert.deepEqual(cnt.result, [{ n: 7 }]);
  });

  it('invokeDeviceMethod on an unknown device is DeviceNotFound', async () => {
    const client = hub.serviceClient();
    await assert.rejects(withTimeout(client.invokeDeviceMethod(uniqueId('nobody'), {
      methodName: 'reboot', payload: {}, responseTimeoutInSeconds: 5,
    }), T, 'invokeDeviceMethod'), (err) => {
      assert.equal(err.name, 'DeviceNotFoundError', err.message);
      return true;
    });
  });
});
