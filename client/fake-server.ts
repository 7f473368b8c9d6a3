// Test helper, not part of the package API: an in-process TCP server that speaks the frames of
// wire.ts. Tests script it per frame (answer late, out of order, with an error, or drop the
// connection), or back it with MemoryStore, a small model of the server's write/read rules.
import * as net from 'node:net';
import { formatKey } from './key.ts';
import {
  Expect,
  FrameDecoder,
  Op,
  Reader,
  Writer,
  decodeKeyRequest,
  decodeReadRequest,
  decodeWriteRequest,
  encodeDetailsOk,
  encodeError,
  encodeFrame,
  encodeWriteOk,
  readEvent,
  writeBatchHeader,
  writeEvent,
  type Frame,
  type WireEvent,
} from './wire.ts';

export interface FakeConnection {
  readonly socket: net.Socket;
  reply(frame: Frame, op: number, body?: Uint8Array): void;
  error(frame: Frame, code: number, message: string, detail?: Record<string, unknown>): void;
  /** Closes the connection abruptly (what a crash or a network cut looks like to the client). */
  drop(): void;
}

export type FrameHandler = (frame: Frame, conn: FakeConnection) => void;

export class FakeServer {
  readonly received: Frame[] = [];
  readonly sockets = new Set<net.Socket>();
  /** Connections accepted so far. */
  accepted = 0;
  /** 'data' events seen (how many reads the frames arrived in). */
  chunks = 0;
  handler: FrameHandler;
  private readonly server: net.Server;

  private constructor(handler: FrameHandler) {
    this.handler = handler;
    this.server = net.createServer((socket) => this.onConnection(socket));
  }

  /** Starts listening on 127.0.0.1 (port 0 = any free port). */
  static async start(handler: FrameHandler, port = 0): Promise<FakeServer> {
    const s = new FakeServer(handler);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', reject);
      s.server.listen(port, '127.0.0.1', () => resolve());
    });
    return s;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** Frames received with the given op. */
  count(op: number): number {
    return this.received.filter((f) => f.op === op).length;
  }

  /** Stops listening and cuts every connection. */
  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private onConnection(socket: net.Socket): void {
    this.accepted++;
    this.sockets.add(socket);
    socket.setNoDelay(true);
    socket.on('close', () => this.sockets.delete(socket));
    socket.on('error', () => socket.destroy());
    const decoder = new FrameDecoder();
    const conn: FakeConnection = {
      socket,
      reply: (frame, op, body = new Uint8Array(0)) => {
        if (!socket.destroyed) socket.write(encodeFrame(frame.correlationId, op, body));
      },
      error: (frame, code, message, detail = {}) => conn.reply(frame, Op.Error, encodeError(code, message, detail)),
      drop: () => socket.destroy(),
    };
    socket.on('data', (chunk: Buffer) => {
      this.chunks++;
      for (const f of decoder.push(chunk)) {
        // Copied, so the frames a test keeps do not pin socket chunks.
        const frame = { correlationId: f.correlationId, op: f.op, body: Uint8Array.from(f.body) };
        this.received.push(frame);
        this.handler(frame, conn);
      }
    });
  }
}

/** Answers pings, and nothing else. */
export const pongOnly: FrameHandler = (frame, conn) => {
  if (frame.op === Op.Ping) conn.reply(frame, Op.Pong);
};

interface StoredBatch {
  fromVersion: bigint;
  toVersion: bigint;
  seq: bigint;
  clientId: bigint;
  events: WireEvent[];
}

interface StoredAggregate {
  version: bigint;
  batches: StoredBatch[];
  /** Highest clientSeq landed per clientId (SPEC §3). */
  floors: Map<bigint, bigint>;
}

/**
 * A one-shard, in-memory model of the server's rules: guards before idempotency, all-or-nothing
 * multi-aggregate writes, pages of at most `pageBatches` batches.
 */
export class MemoryStore {
  readonly aggregates = new Map<string, StoredAggregate>();
  pageBatches: number;
  /**
   * When it returns true for a write, the write is applied and then the connection is cut instead
   * of answering: a lost acknowledgement, without waiting for a timeout.
   */
  loseAnswer: ((frame: Frame) => boolean) | undefined;
  private seq = 0n;

  constructor(pageBatches = 1_000) {
    this.pageBatches = pageBatches;
  }

  readonly handler: FrameHandler = (frame, conn) => {
    switch (frame.op) {
      case Op.Ping:
        return conn.reply(frame, Op.Pong);
      case Op.Write:
        return this.write(frame, conn);
      case Op.Read:
        return this.read(frame, conn);
      case Op.Details:
        return this.details(frame, conn);
      default:
        return conn.error(frame, 9100, `unknown op ${frame.op}`);
    }
  };

  private write(frame: Frame, conn: FakeConnection): void {
    const req = decodeWriteRequest(frame.body);
    for (const w of req.writes) {
      const agg = this.aggregates.get(formatKey(w.key));
      const current = agg?.version ?? 0n;
      const ok =
        w.expectMode === Expect.Any ||
        (w.expectMode === Expect.NoStream && current === 0n) ||
        (w.expectMode === Expect.StreamExists && current > 0n) ||
        (w.expectMode === Expect.Exact && current === w.expectVersion);
      if (!ok) return conn.error(frame, 2003, `expected version mismatch; current version is ${current}`, { currentVersion: String(current) });
    }
    for (const w of req.writes) {
      const floor = this.aggregates.get(formatKey(w.key))?.floors.get(req.clientId) ?? 0n;
      if (w.clientSeq !== 0n && w.clientSeq <= floor) {
        return conn.error(frame, 2002, `clientSeq ${w.clientSeq} already applied`, { lastClientSeq: String(floor) });
      }
    }
    const firstSeq = this.seq + 1n;
    const ranges = [];
    for (const w of req.writes) {
      const k = formatKey(w.key);
      let agg = this.aggregates.get(k);
      if (agg === undefined) {
        agg = { version: 0n, batches: [], floors: new Map() };
        this.aggregates.set(k, agg);
      }
      const r = new Reader(w.events);
      const events: WireEvent[] = [];
      for (let i = 0; i < w.eventCount; i++) events.push(readEvent(r, `events[${i}]`));
      const batch: StoredBatch = { fromVersion: agg.version + 1n, toVersion: agg.version + BigInt(w.eventCount), seq: ++this.seq, clientId: req.clientId, events };
      agg.batches.push(batch);
      agg.version = batch.toVersion;
      if (w.clientSeq !== 0n) agg.floors.set(req.clientId, w.clientSeq);
      ranges.push({ fromVersion: batch.fromVersion, toVersion: batch.toVersion });
    }
    if (this.loseAnswer?.(frame) === true) return conn.drop();
    conn.reply(frame, Op.WriteOk, encodeWriteOk({ shard: 0, firstSeq, ranges }));
  }

  private read(frame: Frame, conn: FakeConnection): void {
    const req = decodeReadRequest(frame.body);
    const agg = this.aggregates.get(formatKey(req.key));
    if (agg === undefined) return conn.error(frame, 1001, `aggregate ${formatKey(req.key)} not found`);
    const inRange = agg.batches.filter((b) => b.toVersion >= req.from && (req.to === 0n || b.fromVersion <= req.to));
    const page = inRange.slice(0, this.pageBatches);
    const rest = inRange[this.pageBatches];
    const w = new Writer();
    w.u64(rest === undefined ? 0n : rest.fromVersion);
    w.u32(page.length);
    for (const b of page) {
      writeBatchHeader(w, { fromVersion: b.fromVersion, toVersion: b.toVersion, shard: 0, seq: b.seq, clientId: b.clientId, serverTimestampMs: 1_700_000_000_000, eventCount: b.events.length });
      b.events.forEach((e, i) => {
        w.u64(b.fromVersion + BigInt(i));
        writeEvent(w, e);
      });
    }
    conn.reply(frame, Op.ReadOk, w.finish());
  }

  private details(frame: Frame, conn: FakeConnection): void {
    const key = decodeKeyRequest(frame.body);
    const agg = this.aggregates.get(formatKey(key));
    if (agg === undefined) return conn.error(frame, 1001, `aggregate ${formatKey(key)} not found`);
    const last = agg.batches[agg.batches.length - 1]!;
    conn.reply(
      frame,
      Op.DetailsOk,
      encodeDetailsOk({ version: agg.version, minVersion: 1n, shard: 0, lastSeq: last.seq, lastClientId: last.clientId, lastServerTimestampMs: 1_700_000_000_000, deleted: false }),
    );
  }
}

/** Turns the event loop until `cond` holds; fails after `turnsMax` turns (no wall-clock bound). */
export async function until(cond: () => boolean, what: string, turnsMax = 100_000): Promise<void> {
  for (let i = 0; i < turnsMax; i++) {
    if (cond()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  throw new Error(`gave up waiting for ${what}`);
}

/** An address nothing listens on (a port that was just free). */
export async function deadAddress(): Promise<string> {
  const s = await FakeServer.start(() => {});
  const address = s.address;
  await s.close();
  return address;
}
