// The shared fixture of the gRPC front-end tests (dataplane/server/grpc-*.test.ts): a server on
// 127.0.0.1 over a FakeDispatcher that records every call and answers whatever the test installs,
// a stub client and a raw client to it (useGrpcServer starts them before the file's tests and stops
// them after), the call helpers, and builders of wire read responses and protobuf bytes.
import { after, before, beforeEach } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { encodeError, Op, readEvent, Reader, writeBatchHeader, writeEvent, Writer, type WireBatchHeader, type WireEvent } from '../../client/wire.ts';
import type { Dispatcher, DispatchResult } from './dispatch.ts';
import { PROTO_LOADER_OPTIONS, PROTO_PATH, startGrpcServer, type GrpcServerHandle } from './grpc.ts';

// ---------------------------------------------------------------------------------------------
// A fake Dispatcher: records every call and answers with whatever the test installs.

export interface Call {
  op: number;
  body: Uint8Array;
}

export class FakeDispatcher implements Dispatcher {
  calls: Call[] = [];
  answer: (op: number, body: Uint8Array) => DispatchResult = () => ({ op: Op.Error, body: encodeError(9100, 'no answer installed') });
  async dispatch(op: number, body: Uint8Array): Promise<DispatchResult> {
    this.calls.push({ op, body: body.slice() });
    return this.answer(op, body);
  }
}

/** The read response body (the server side encodes it in the shard worker; mirrored here). */
export function encodeReadOk(nextVersion: bigint, batches: (WireBatchHeader & { events: (WireEvent & { version: bigint })[] })[]): Uint8Array {
  const w = new Writer();
  w.u64(nextVersion);
  w.u32(batches.length);
  for (const b of batches) {
    writeBatchHeader(w, { ...b, eventCount: b.events.length });
    for (const e of b.events) {
      w.u64(e.version);
      writeEvent(w, e);
    }
  }
  return w.finish();
}

export function batch(fromVersion: bigint, count: number, seq: bigint, type = 'Happened'): WireBatchHeader & { events: (WireEvent & { version: bigint })[] } {
  const events = [];
  for (let i = 0; i < count; i++) {
    events.push({ version: fromVersion + BigInt(i), type, data: new TextEncoder().encode(`e${fromVersion + BigInt(i)}`) });
  }
  return { fromVersion, toVersion: fromVersion + BigInt(count - 1), shard: 3, seq, clientId: 77n, serverTimestampMs: 1_700_000_000_123, eventCount: count, events };
}

export function eventsOf(body: Uint8Array, count: number): WireEvent[] {
  const r = new Reader(body);
  const out = [];
  for (let i = 0; i < count; i++) out.push(readEvent(r, `e${i}`));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Client plumbing

export type Callback = (err: grpc.ServiceError | null, res?: unknown) => void;
export type StubClient = grpc.Client & Record<string, (req: unknown, cb: Callback) => void> & { ReadAll(req: unknown): grpc.ClientReadableStream<unknown> };

export const fake = new FakeDispatcher();
let server: GrpcServerHandle;
let client: StubClient;
export let raw: grpc.Client;

export function unary(method: string, req: unknown): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    client[method]!(req, (err, res) => (err ? reject(err) : resolve(res as Record<string, unknown>)));
  });
}

export function unaryError(method: string, req: unknown): Promise<grpc.ServiceError> {
  return unary(method, req).then(
    () => assert.fail(`${method} succeeded; an error was expected`),
    (err: grpc.ServiceError) => err,
  );
}

/** Sends already-encoded protobuf bytes (to test what a stub would never produce). */
export function rawCall(method: string, bytes: Uint8Array): Promise<grpc.ServiceError> {
  return new Promise((resolve, reject) => {
    raw.makeUnaryRequest(
      `/celer.v1.EventStore/${method}`,
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.from(bytes),
      (err, res) => (err ? resolve(err) : reject(new Error(`expected an error; got ${res?.length} bytes`))),
    );
  });
}

export function readAllMessages(req: unknown): Promise<{ messages: Record<string, unknown>[]; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const messages: Record<string, unknown>[] = [];
    const stream = client.ReadAll(req);
    stream.on('data', (m: Record<string, unknown>) => messages.push(m));
    stream.on('error', (error: grpc.ServiceError) => resolve({ messages, error }));
    stream.on('end', () => resolve({ messages }));
  });
}

export function celerCode(err: grpc.ServiceError): number {
  const v = err.metadata.get('celer-code')[0];
  return Number(v);
}

export function celerDetail(err: grpc.ServiceError): Record<string, unknown> {
  const v = err.metadata.get('celer-detail')[0];
  assert.equal(typeof v, 'string');
  return JSON.parse(v as string) as Record<string, unknown>;
}

export let definition: protoLoader.PackageDefinition;

export function encode(typeName: string, value: unknown): Buffer {
  // Encodes with the serializer of the method that takes this request type.
  const svc = definition['celer.v1.EventStore'] as Record<string, { requestType: { type: { name: string } }; requestSerialize: (v: unknown) => Buffer }>;
  const m = Object.values(svc).find((x) => x.requestType.type.name === typeName);
  assert.ok(m, `a method takes ${typeName}`);
  return m.requestSerialize(value);
}

export function varint(n: number): number[] {
  const out = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

export const okKey = { org: '1', type: '2', id: '3' };
export const okEvent = { type: 'Created', data: Buffer.from('{}') };

/** Starts the server and its clients before the calling file's tests, stops them after, and clears the recorded calls before each test. */
export function useGrpcServer(): void {
  before(async () => {
    server = await startGrpcServer(fake, '127.0.0.1:0');
    definition = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
    const pkg = grpc.loadPackageDefinition(definition) as unknown as { celer: { v1: { EventStore: grpc.ServiceClientConstructor } } };
    client = new pkg.celer.v1.EventStore(server.address, grpc.credentials.createInsecure()) as unknown as StubClient;
    raw = new grpc.Client(server.address, grpc.credentials.createInsecure());
  });

  after(async () => {
    client.close();
    raw.close();
    await server.close();
  });

  beforeEach(() => {
    fake.calls = [];
  });
}
