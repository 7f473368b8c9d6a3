// Answer frames → public result types. An answer of the wrong kind is a protocol error (WireError).
import type { AggregateDetails, AppendResult, Batch, DeleteResult, ReadPage, RecordedEvent, RegisteredSchema, RegisterSchemaResult } from './types.ts';
import { Op, WireError, decodeControlOk, decodeDetailsOk, decodeListSchemasOk, decodeReadOk, decodeRegisterSchemaOk, decodeWriteOk, type Frame, type WireEvent } from './wire.ts';

function expectOp(frame: Frame, op: number, what: string): void {
  if (frame.op !== op) throw new WireError(`expected a ${what} answer (op 0x${op.toString(16)}), got op 0x${frame.op.toString(16)}`);
}

export function decodeWriteResults(frame: Frame, count: number): AppendResult[] {
  expectOp(frame, Op.WriteOk, 'write');
  const ok = decodeWriteOk(frame.body);
  if (ok.ranges.length !== count) throw new WireError(`the write answer has ${ok.ranges.length} ranges for ${count} aggregate writes`);
  const results = new Array<AppendResult>(count);
  for (let i = 0; i < count; i++) {
    const rg = ok.ranges[i]!;
    results[i] = { fromVersion: rg.fromVersion, toVersion: rg.toVersion, position: { shard: ok.shard, seq: ok.firstSeq + BigInt(i) } };
  }
  return results;
}

/** A wire event as the public types have it (shared by the read and the feed decoders). */
export function toRecordedEvent(e: WireEvent & { version: bigint }): RecordedEvent {
  const out: RecordedEvent = { version: e.version, type: e.type, data: e.data };
  if (e.metadata !== undefined) out.metadata = e.metadata;
  if (e.schemaMajor !== undefined) out.schemaVersion = { major: e.schemaMajor, minor: e.schemaMinor ?? 0 };
  if (e.iv !== undefined) out.iv = e.iv;
  return out;
}

export function decodeReadPage(frame: Frame): ReadPage {
  expectOp(frame, Op.ReadOk, 'read');
  const ok = decodeReadOk(frame.body);
  const batches = new Array<Batch>(ok.batches.length);
  for (let i = 0; i < ok.batches.length; i++) {
    const b = ok.batches[i]!;
    batches[i] = {
      fromVersion: b.fromVersion,
      toVersion: b.toVersion,
      position: { shard: b.shard, seq: b.seq },
      clientId: b.clientId,
      serverTimestampMs: b.serverTimestampMs,
      events: b.events.map(toRecordedEvent),
    };
  }
  return ok.nextVersion === 0n ? { batches } : { batches, nextVersion: ok.nextVersion };
}

export function decodeDetails(frame: Frame): AggregateDetails {
  expectOp(frame, Op.DetailsOk, 'details');
  const d = decodeDetailsOk(frame.body);
  return {
    version: d.version,
    minVersion: d.minVersion,
    lastPosition: { shard: d.shard, seq: d.lastSeq },
    lastClientId: d.lastClientId,
    lastServerTimestampMs: d.lastServerTimestampMs,
    deleted: d.deleted,
  };
}

export function decodeControl(frame: Frame, op: typeof Op.DeleteOk | typeof Op.TrimOk, what: string): DeleteResult {
  expectOp(frame, op, what);
  const ok = decodeControlOk(frame.body);
  return { position: { shard: ok.shard, seq: ok.seq }, version: ok.version, minVersion: ok.minVersion, unchanged: ok.unchanged };
}

export function decodePong(frame: Frame): void {
  expectOp(frame, Op.Pong, 'ping');
}

export function decodeRegisterSchema(frame: Frame): RegisterSchemaResult {
  expectOp(frame, Op.RegisterSchemaOk, 'schema registration');
  return decodeRegisterSchemaOk(frame.body);
}

export function decodeSchemaList(frame: Frame): RegisteredSchema[] {
  expectOp(frame, Op.ListSchemasOk, 'schema list');
  return decodeListSchemasOk(frame.body).map((s) => ({
    org: s.org,
    type: s.type,
    eventType: s.eventType,
    version: { major: s.major, minor: s.minor },
    format: s.format,
    schema: s.schema,
  }));
}
