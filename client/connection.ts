// One TCP connection to one node, carrying many requests at once (multiplexed by correlation id).
//
// Lifecycle: dial() opens it; request() sends a frame and resolves with the answer frame; the
// first socket error, close or protocol violation fails every outstanding request with
// ConnectionError and the connection is dead for good (the pool dials a new one).
//
// Hot path: frames queued during one event-loop turn go out in one socket write (setImmediate
// flush); one timer per connection serves every request's deadline, because deadlines are
// assigned in send order and so expire from the front.
import * as net from 'node:net';
import { performance } from 'node:perf_hooks';
import { ConnectFailedError, ConnectionError, RequestQueueFullError, TimeoutError } from './errors.ts';
import { FrameDecoder, Limits, Op, setCorrelationId, type Frame } from './wire.ts';

/** Frames up to this many bytes in one flush are copied into one buffer; beyond it, a corked writev avoids the copy. */
const COALESCE_COPY_BYTES_MAX = 64 * 1024;
/** Correlation ids wrap below 2^32 (the wire field is a u32); 0 is never used, it names no request. */
const CORRELATION_ID_MAX = 0xffff_ffff;
/** The wait queue is compacted once this many consumed slots sit at its head. */
const QUEUE_COMPACT_AT = 1024;

export interface ConnectionLimits {
  requestTimeoutMs: number;
  connectTimeoutMs: number;
  maxInFlightPerConnection: number;
  maxQueuedPerConnection: number;
}

export interface HostPort {
  host: string;
  port: number;
}

/** Parses "host:port" or "[v6]:port". Returns undefined when it is not one. */
export function parseAddress(address: string): HostPort | undefined {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(address);
  if (m === null) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65_535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

const OP_NAMES: Record<number, string> = { [Op.Write]: 'write', [Op.Read]: 'read', [Op.Details]: 'details', [Op.Ping]: 'ping' };

class Pending {
  id = 0;
  /** Held until sent, then dropped so a large frame can be collected while its answer is awaited. */
  frame: Uint8Array | undefined;
  readonly op: number;
  readonly deadline: number;
  readonly resolve: (f: Frame) => void;
  readonly reject: (e: Error) => void;
  constructor(frame: Uint8Array, deadline: number, resolve: (f: Frame) => void, reject: (e: Error) => void) {
    this.frame = frame;
    this.op = frame[8]!;
    this.deadline = deadline;
    this.resolve = resolve;
    this.reject = reject;
  }
}

export class Connection {
  readonly address: string;
  private readonly socket: net.Socket;
  private readonly limits: ConnectionLimits;
  private readonly decoder = new FrameDecoder(Limits.frameBytesMax);
  /** On the wire, in send order (= deadline order). */
  private readonly inFlight = new Map<number, Pending>();
  /** Waiting for an in-flight slot, in request order; entries before `waitHead` are consumed. */
  private waiting: (Pending | undefined)[] = [];
  private waitHead = 0;
  private readonly out: Uint8Array[] = [];
  private outBytes = 0;
  private flushScheduled = false;
  private nextId = 1;
  private timer: NodeJS.Timeout | undefined;
  private failure: ConnectionError | undefined;
  private readonly closeListeners: ((c: Connection) => void)[] = [];

  private constructor(address: string, socket: net.Socket, limits: ConnectionLimits) {
    this.address = address;
    this.socket = socket;
    this.limits = limits;
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => this.fail(new ConnectionError(`connection to ${address} failed: ${err.message}`, { cause: err })));
    socket.on('close', () => this.fail(new ConnectionError(`connection to ${address} was closed`)));
  }

  /** Opens a connection; fails with ConnectFailedError (nothing was sent) on error or after connectTimeoutMs. */
  static dial(address: string, limits: ConnectionLimits): Promise<Connection> {
    const hp = parseAddress(address);
    if (hp === undefined) return Promise.reject(new ConnectFailedError(`"${address}" is not a host:port address`));
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host: hp.host, port: hp.port, noDelay: true, keepAlive: true });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new ConnectFailedError(`connecting to ${address} took longer than ${limits.connectTimeoutMs} ms`));
      }, limits.connectTimeoutMs);
      const onError = (err: Error): void => {
        clearTimeout(timer);
        reject(new ConnectFailedError(`cannot connect to ${address}: ${err.message}`, { cause: err }));
      };
      socket.once('error', onError);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', onError);
        resolve(new Connection(address, socket, limits));
      });
    });
  }

  get alive(): boolean {
    return this.failure === undefined;
  }

  /** Requests sent and not yet answered. */
  get inFlightCount(): number {
    return this.inFlight.size;
  }

  onClose(listener: (c: Connection) => void): void {
    this.closeListeners.push(listener);
  }

  /**
   * Sends a complete frame (its correlation id is stamped here) and resolves with the answer.
   * Rejects with TimeoutError after requestTimeoutMs, ConnectionError if the connection dies
   * first, RequestQueueFullError when too many requests already wait.
   */
  request(frame: Uint8Array): Promise<Frame> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const queued = this.waiting.length - this.waitHead;
    if (this.inFlight.size >= this.limits.maxInFlightPerConnection && queued >= this.limits.maxQueuedPerConnection) {
      return Promise.reject(
        new RequestQueueFullError(
          `${this.inFlight.size} requests are in flight and ${queued} waiting on the connection to ${this.address} ` +
            `(maxInFlightPerConnection ${this.limits.maxInFlightPerConnection}, maxQueuedPerConnection ${this.limits.maxQueuedPerConnection}); ` +
            'the request was not sent',
        ),
      );
    }
    const { promise, resolve, reject } = Promise.withResolvers<Frame>();
    const p = new Pending(frame, performance.now() + this.limits.requestTimeoutMs, resolve, reject);
    if (queued === 0 && this.inFlight.size < this.limits.maxInFlightPerConnection) this.send(p);
    else this.waiting.push(p);
    if (this.timer === undefined) this.arm();
    return promise;
  }

  /** Closes the connection; outstanding requests fail with ConnectionError. */
  close(reason = 'the client was closed'): void {
    this.fail(new ConnectionError(`connection to ${this.address} closed: ${reason}`));
  }

  private send(p: Pending): void {
    let id = this.nextId;
    while (id === 0 || this.inFlight.has(id)) id = id >= CORRELATION_ID_MAX ? 1 : id + 1;
    this.nextId = id >= CORRELATION_ID_MAX ? 1 : id + 1;
    const frame = p.frame!;
    p.frame = undefined;
    p.id = id;
    setCorrelationId(frame, id);
    this.inFlight.set(id, p);
    this.out.push(frame);
    this.outBytes += frame.length;
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(this.flush);
    }
  }

  private readonly flush = (): void => {
    this.flushScheduled = false;
    const out = this.out;
    if (this.failure !== undefined || out.length === 0) return;
    if (out.length === 1) {
      this.socket.write(out[0]!);
    } else if (this.outBytes <= COALESCE_COPY_BYTES_MAX) {
      this.socket.write(Buffer.concat(out, this.outBytes));
    } else {
      this.socket.cork();
      for (const f of out) this.socket.write(f);
      this.socket.uncork();
    }
    out.length = 0;
    this.outBytes = 0;
  };

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      // A plain view, so every payload handed out is a Uint8Array whichever way chunks split.
      frames = this.decoder.push(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length));
    } catch (err) {
      this.fail(new ConnectionError(`protocol error on the connection to ${this.address}: ${(err as Error).message}`, { cause: err }));
      return;
    }
    for (const f of frames) {
      const p = this.inFlight.get(f.correlationId);
      if (p === undefined) {
        // Correlation id 0 is the server's answer to a frame it could not read; it closes next.
        if (f.correlationId === 0 && f.op === Op.Error) {
          this.fail(new ConnectionError(`the server at ${this.address} rejected a frame it could not read`));
          return;
        }
        continue; // a late answer to a request that already timed out
      }
      this.inFlight.delete(f.correlationId);
      p.resolve(f);
    }
    this.pump();
  }

  /** Moves waiting requests into free in-flight slots. */
  private pump(): void {
    const max = this.limits.maxInFlightPerConnection;
    while (this.waitHead < this.waiting.length && this.inFlight.size < max) {
      const p = this.waiting[this.waitHead]!;
      this.waiting[this.waitHead++] = undefined;
      this.send(p);
    }
    this.compactWaiting();
  }

  private compactWaiting(): void {
    if (this.waitHead === this.waiting.length) {
      this.waiting.length = 0;
      this.waitHead = 0;
    } else if (this.waitHead >= QUEUE_COMPACT_AT && this.waitHead * 2 >= this.waiting.length) {
      this.waiting = this.waiting.slice(this.waitHead);
      this.waitHead = 0;
    }
  }

  /** Arms the one timer for the oldest deadline, if any request is outstanding. */
  private arm(): void {
    let oldest = Infinity;
    for (const p of this.inFlight.values()) {
      oldest = p.deadline;
      break;
    }
    const w = this.waiting[this.waitHead];
    if (w !== undefined && w.deadline < oldest) oldest = w.deadline;
    if (oldest === Infinity) return;
    this.timer = setTimeout(this.onTimer, Math.max(0, Math.ceil(oldest - performance.now())));
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    if (this.failure !== undefined) return;
    const now = performance.now();
    for (const [id, p] of this.inFlight) {
      if (p.deadline > now) break;
      this.inFlight.delete(id);
      p.reject(this.timeoutError(p, true));
    }
    while (this.waitHead < this.waiting.length) {
      const p = this.waiting[this.waitHead]!;
      if (p.deadline > now) break;
      this.waiting[this.waitHead++] = undefined;
      p.reject(this.timeoutError(p, false));
    }
    this.pump();
    this.arm();
  };

  private timeoutError(p: Pending, sent: boolean): TimeoutError {
    const op = OP_NAMES[p.op] ?? `op ${p.op}`;
    return new TimeoutError(
      sent
        ? `no answer from ${this.address} to a ${op} request within ${this.limits.requestTimeoutMs} ms; ` +
            'a write may or may not have been applied: retry it with the same clientId and clientSeq'
        : `a ${op} request waited ${this.limits.requestTimeoutMs} ms for a free slot on the connection to ${this.address} and was not sent`,
    );
  }

  private fail(err: ConnectionError): void {
    if (this.failure !== undefined) return;
    this.failure = err;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    this.socket.destroy();
    this.out.length = 0;
    this.outBytes = 0;
    const inFlight = [...this.inFlight.values()];
    this.inFlight.clear();
    const waiting = this.waiting.slice(this.waitHead);
    this.waiting = [];
    this.waitHead = 0;
    const unknown = new ConnectionError(`${err.message}; a write sent on it may or may not have been applied`, { cause: err.cause ?? err });
    for (const p of inFlight) p.reject(unknown);
    for (const p of waiting) p?.reject(err);
    for (const l of this.closeListeners) l(this);
  }
}
