// gRPC front end, calls in flight per connection: one connection never has more than
// CONNECTION_REQUESTS_IN_FLIGHT_MAX calls at the dispatcher, and the calls beyond wait and complete.
// The test runs its own server over a holding dispatcher; fixture: grpc-test-fixtures.ts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { encodeDetailsOk, Op } from '../../client/wire.ts';
import type { Dispatcher, DispatchResult } from './dispatch.ts';
import { startGrpcServer } from './grpc.ts';
import { CONNECTION_REQUESTS_IN_FLIGHT_MAX } from '../constants.ts';
import { waitUntil } from '../../test/e2e/lib/wait.ts';
import { definition, okKey, useGrpcServer, type StubClient } from './grpc-test-fixtures.ts';

useGrpcServer();

describe('calls in flight per connection', () => {
  test('one connection has at most CONNECTION_REQUESTS_IN_FLIGHT_MAX calls at the dispatcher; the client queues the rest and every call completes', async () => {
    let holding: (() => void)[] = [];
    let maxHeld = 0;
    let seen = 0;
    const holder: Dispatcher = {
      dispatch: () =>
        new Promise<DispatchResult>((resolve) => {
          seen++;
          holding.push(() => resolve({ op: Op.DetailsOk, body: encodeDetailsOk({ version: 1n, minVersion: 1n, shard: 0, lastSeq: 1n, lastClientId: 0n, lastServerTimestampMs: 0, deleted: false }) }));
          maxHeld = Math.max(maxHeld, holding.length);
        }),
    };
    const releaseAll = (): void => {
      const h = holding;
      holding = [];
      for (const f of h) f();
    };
    const s = await startGrpcServer(holder, '127.0.0.1:0', { closeGraceMs: 100 });
    const pkg = grpc.loadPackageDefinition(definition) as unknown as { celer: { v1: { EventStore: grpc.ServiceClientConstructor } } };
    const c = new pkg.celer.v1.EventStore(s.address, grpc.credentials.createInsecure()) as unknown as StubClient;
    try {
      const total = CONNECTION_REQUESTS_IN_FLIGHT_MAX + 200;
      let done = 0;
      let failed = 0;
      const calls = Array.from(
        { length: total },
        () =>
          new Promise<void>((resolve) =>
            c.Details!({ key: okKey }, (err) => {
              if (err) failed++;
              done++;
              resolve();
            }),
          ),
      );
      // Release in waves: each time the server has dispatched all it may (the bound, or the rest).
      while (seen < total) {
        await waitUntil(`a full wave of calls at the dispatcher (seen ${seen}, holding ${holding.length}, done ${done})`, () => holding.length >= CONNECTION_REQUESTS_IN_FLIGHT_MAX || seen === total);
        releaseAll();
      }
      await Promise.all(calls);
      assert.equal(failed, 0, 'no call was refused');
      assert.equal(maxHeld, CONNECTION_REQUESTS_IN_FLIGHT_MAX, 'calls at the dispatcher reached the bound and never passed it');
    } finally {
      releaseAll();
      c.close();
      await s.close();
    }
  });
});
