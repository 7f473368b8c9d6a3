// The native protocol server (client/wire.ts framing) on the main thread. Many requests are in
// flight per connection; responses go out in whatever order shards finish, matched by
// correlation id, and all responses ready in one tick leave in one socket write.
//
// Bounds per connection: at most CONNECTION_REQUESTS_IN_FLIGHT_MAX requests dispatched and not
// answered, and at most CONNECTION_WRITE_BUFFER_BYTES_MAX of responses the peer has not read.
// Over either, the server stops reading the socket (TCP flow control then stops the peer) until
// it is back under; requests are dispatched in the order they arrived, none is refused or dropped
// — except feed long polls beyond FEED_WAITS_PER_CONNECTION_MAX, answered 2012 at once, so that
// subscribers never hold the slots the connection's writes need.
import { createServer, type Server, type Socket } from 'node:net';
import { ErrorCode } from '../../client/errors.ts';
import { encodeError, FRAME_HEADER_BYTES, FrameDecoder, Op, WireError, Writer, type Frame } from '../../client/wire.ts';
import { CONNECTION_REQUESTS_IN_FLIGHT_MAX, CONNECTION_WRITE_BUFFER_BYTES_MAX, FEED_WAITS_PER_CONNECTION_MAX } from '../constants.ts';
import type { Dispatcher, DispatchResult } from './dispatch.ts';
import { observeRequest } from './metrics.ts';

export interface NativeServerHandle {
  address: string;
  close(): Promise<void>;
}

export function splitHostPort(address: string): { host: string; port: number } {
  const i = address.lastIndexOf(':');
  if (i <= 0) throw new Error(`address "${address}" must be HOST:PORT`);
  const port = Number(address.slice(i + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`address "${address}" has an invalid port`);
  return { host: address.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

function serve(socket: Socket, dispatcher: Dispatcher, log: (m: string) => void): void {
  socket.setNoDelay(true);
  const decoder = new FrameDecoder();
  // Responses ready in one tick are framed straight into one buffer and leave in one write.
  const out = new Writer(64 * 1024);
  let scheduled = false;
  let closed = false;
  // Reading stops while the peer is not reading its responses (writeBacklogged) or has
  // CONNECTION_REQUESTS_IN_FLIGHT_MAX requests unanswered. Frames read past the bound wait in
  // `waiting`, oldest first: at most one socket read's worth plus one frame, as reading stops then.
  let writeBacklogged = false;
  let inFlight = 0;
  let paused = false;
  let waiting: (Frame | undefined)[] = [];
  let waitingHead = 0;
  let feedWaits = 0;

  function updateReading(): void {
    const stop = writeBacklogged || inFlight >= CONNECTION_REQUESTS_IN_FLIGHT_MAX || waitingHead < waiting.length;
    if (stop === paused || closed) return;
    paused = stop;
    if (stop) socket.pause();
    else socket.resume();
  }

  function flush(): void {
    scheduled = false;
    if (closed || out.pos === 0) return;
    socket.write(out.buf.slice(0, out.pos));
    out.pos = 0;
    if (!writeBacklogged && socket.writableLength > CONNECTION_WRITE_BUFFER_BYTES_MAX) {
      // The peer is not reading its responses: stop reading its requests until it does.
      writeBacklogged = true;
      updateReading();
      socket.once('drain', () => {
        writeBacklogged = false;
        updateReading();
      });
    }
  }

  function send(correlationId: number, op: number, body: Uint8Array): void {
    out.ensure(FRAME_HEADER_BYTES + body.length);
    out.view.setUint32(out.pos, body.length + 5, true);
    out.view.setUint32(out.pos + 4, correlationId, true);
    out.buf[out.pos + 8] = op;
    out.pos += FRAME_HEADER_BYTES;
    out.bytes(body);
    if (!scheduled) {
      scheduled = true;
      setImmediate(flush);
    }
  }

  function dispatch(f: Frame): void {
    const waits = isFeedWait(f);
    if (waits) {
      if (feedWaits >= FEED_WAITS_PER_CONNECTION_MAX) {
        observeRequest(f.op, ErrorCode.ServerBusy, 0);
        const detail = { limit: 'FEED_WAITS_PER_CONNECTION_MAX', max: FEED_WAITS_PER_CONNECTION_MAX };
        send(f.correlationId, Op.Error, encodeError(ErrorCode.ServerBusy, `this connection has ${feedWaits} subscription or watch long polls waiting, its limit (FEED_WAITS_PER_CONNECTION_MAX ${FEED_WAITS_PER_CONNECTION_MAX}); open another connection for more subscribers, or share one subscription between them`, detail));
        return;
      }
      feedWaits++;
    }
    inFlight++;
    const t0 = performance.now();
    // A dispatcher that throws instead of rejecting is an internal error of this request, not of the process.
    let answer: Promise<DispatchResult>;
    try {
      answer = dispatcher.dispatch(f.op, f.body);
    } catch (e) {
      answer = Promise.reject(e instanceof Error ? e : new Error(String(e)));
    }
    answer.then(
      (r) => {
        if (waits) feedWaits--;
        observeRequest(f.op, r.op === Op.Error ? errorCode(r.body) : 'ok', (performance.now() - t0) / 1000);
        if (!closed) send(f.correlationId, r.op, r.body);
        answered();
      },
      (e: Error) => {
        if (waits) feedWaits--;
        log(`internal error: ${e.stack ?? e.message}`);
        if (!closed) send(f.correlationId, Op.Error, encodeError(ErrorCode.ShardUnavailable, `internal error: ${e.message}`));
        answered();
      },
    );
  }

  /** A request was answered: its slot goes to the oldest waiting frame, then reading may resume. */
  function answered(): void {
    inFlight--;
    if (closed) return;
    while (waitingHead < waiting.length && inFlight < CONNECTION_REQUESTS_IN_FLIGHT_MAX) {
      const f = waiting[waitingHead]!;
      waiting[waitingHead++] = undefined; // its body can be collected once answered
      dispatch(f);
    }
    if (waitingHead > 0 && waitingHead === waiting.length) {
      waiting = [];
      waitingHead = 0;
    }
    updateReading();
  }

  /** The connection is gone: frames never dispatched get no answer. Requests in flight finish at
   * the dispatcher, which releases what they hold; their answers are discarded. */
  function drop(): void {
    closed = true;
    waiting = [];
    waitingHead = 0;
  }

  socket.on('data', (chunk: Buffer) => {
    let frames;
    try {
      frames = decoder.push(chunk);
    } catch (e) {
      // The byte stream cannot be framed any more: say why, then close this connection only.
      const msg = e instanceof WireError ? e.message : String(e);
      log(`closing connection from ${socket.remoteAddress}:${socket.remotePort}: ${msg}`);
      send(0, Op.Error, encodeError(ErrorCode.BadRequest, `malformed frame: ${msg}; closing the connection`));
      flush();
      drop();
      socket.end();
      return;
    }
    for (const f of frames) {
      // In arrival order: nothing overtakes a waiting frame.
      if (waitingHead === waiting.length && inFlight < CONNECTION_REQUESTS_IN_FLIGHT_MAX) dispatch(f);
      else waiting.push(f);
    }
    updateReading();
  });
  socket.on('error', drop);
  socket.on('close', drop);
}

/** A shard feed read that may wait at the tail (waitMs > 0: u32 shard | u64 from | u32 maxBytes | u32 waitMs). */
function isFeedWait(f: Frame): boolean {
  if (f.op !== Op.ReadShard || f.body.length < 20) return false;
  return new DataView(f.body.buffer, f.body.byteOffset, 20).getUint32(16) > 0;
}

function errorCode(body: Uint8Array): number {
  return body.length >= 2 ? (body[0]! << 8) | body[1]! : 0;
}

export async function startNativeServer(dispatcher: Dispatcher, address: string, log: (m: string) => void): Promise<NativeServerHandle> {
  const { host, port } = splitHostPort(address);
  const sockets = new Set<Socket>();
  const server: Server = createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    serve(s, dispatcher, log);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port, backlog: 4096 }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address();
  const bound = typeof a === 'object' && a !== null ? `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}` : address;
  return {
    address: bound,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}
