// Delete and trim messages (Op.Delete / Op.Trim and their answers): tombstones in a shard's log.
// Re-exported from wire.ts.
import type { NormalizedKey } from './key.ts';
import { Reader, WireError, Writer } from './codec.ts';
import { Expect, type ExpectMode } from './wire.ts';

const DELETE_ALLOW_RECREATE = 1;

/** Delete: u128 clientId | key | u8 mode (Any or Exact) | u64 expectVersion | u8 flags (1 allowRecreate). */
export interface WireDeleteRequest {
  clientId: bigint;
  key: NormalizedKey;
  expectMode: ExpectMode;
  expectVersion: bigint;
  allowRecreate: boolean;
}

export function encodeDeleteRequest(req: WireDeleteRequest): Uint8Array {
  const w = new Writer(80);
  w.u128(req.clientId);
  w.key(req.key);
  w.u8(req.expectMode);
  w.u64(req.expectVersion);
  w.u8(req.allowRecreate ? DELETE_ALLOW_RECREATE : 0);
  return w.finish();
}

export function decodeDeleteRequest(body: Uint8Array): WireDeleteRequest {
  const r = new Reader(body);
  const clientId = r.u128('clientId');
  const key = r.key('key');
  const expectMode = r.u8('expectMode');
  if (expectMode !== Expect.Any && expectMode !== Expect.Exact) throw new WireError(`delete takes expectedVersion as a version or nothing (mode ${expectMode} is not allowed)`);
  const expectVersion = r.u64('expectVersion');
  if (expectMode === Expect.Exact && expectVersion === 0n) throw new WireError('delete with expectedVersion 0: there is nothing to delete at version 0');
  const flags = r.u8('flags');
  if ((flags & ~DELETE_ALLOW_RECREATE) !== 0) throw new WireError(`unknown delete flags 0x${flags.toString(16)}`);
  r.done('the delete request');
  return { clientId, key, expectMode: expectMode as ExpectMode, expectVersion, allowRecreate: (flags & DELETE_ALLOW_RECREATE) !== 0 };
}

/** Trim: u128 clientId | key | u64 keepFromVersion. */
export interface WireTrimRequest {
  clientId: bigint;
  key: NormalizedKey;
  keepFromVersion: bigint;
}

export function encodeTrimRequest(req: WireTrimRequest): Uint8Array {
  const w = new Writer(72);
  w.u128(req.clientId);
  w.key(req.key);
  w.u64(req.keepFromVersion);
  return w.finish();
}

export function decodeTrimRequest(body: Uint8Array): WireTrimRequest {
  const r = new Reader(body);
  const clientId = r.u128('clientId');
  const key = r.key('key');
  const keepFromVersion = r.u64('keepFromVersion');
  if (keepFromVersion === 0n) throw new WireError('keepFromVersion must be at least 1 (versions start at 1)');
  r.done('the trim request');
  return { clientId, key, keepFromVersion };
}

const CONTROL_NOTHING_TO_DO = 1;

/** DeleteOk / TrimOk: u32 shard | u64 seq | u64 version | u64 minVersion | u8 flags (1: nothing to do, already so). */
export interface WireControlOk {
  shard: number;
  /** Position of the tombstone (of the aggregate's newest batch when there was nothing to do). */
  seq: bigint;
  version: bigint;
  minVersion: bigint;
  unchanged: boolean;
}

export function encodeControlOk(ok: WireControlOk): Uint8Array {
  const w = new Writer(32);
  w.u32(ok.shard);
  w.u64(ok.seq);
  w.u64(ok.version);
  w.u64(ok.minVersion);
  w.u8(ok.unchanged ? CONTROL_NOTHING_TO_DO : 0);
  return w.finish();
}

export function decodeControlOk(body: Uint8Array): WireControlOk {
  const r = new Reader(body);
  const shard = r.u32('shard');
  const seq = r.u64('seq');
  const version = r.u64('version');
  const minVersion = r.u64('minVersion');
  const unchanged = (r.u8('flags') & CONTROL_NOTHING_TO_DO) !== 0;
  r.done('the delete/trim response');
  return { shard, seq, version, minVersion, unchanged };
}
