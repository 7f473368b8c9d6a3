// gRPC front end: service celer.v1.EventStore (proto/celer/v1/eventstore.proto).
//
// Each call is turned into the native wire body (client/wire.ts), handed to the Dispatcher, and
// the wire response is turned back into protobuf. Input is validated here first (keys, events,
// limits), so every bad request is answered with INVALID_ARGUMENT and celer-code 9100 and a
// message that names the offending field. Errors carry the numeric Celer code and its detail in
// the trailing metadata (celer-code, celer-detail), so clients in any language see what the
// TypeScript client sees.
//
// protobufjs skips fields it does not know; Celer refuses them instead. Every request is walked
// once at the protobuf wire level against the message descriptors before it is decoded (see
// checkMessage), in the request deserializer. A deserializer that throws would make grpc-js
// answer INTERNAL, so ours returns a Rejected marker that the handler turns into 9100.
//
// The protobuf ↔ wire conversions of each call are in grpc-convert.ts.
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ErrorCode } from '../../client/errors.ts';
import {
  decodeControlOk,
  decodeDetailsOk,
  decodeListSchemasOk,
  decodeRegisterSchemaOk,
  decodeReadOk,
  decodeReadShardOk,
  Limits,
  Op,
  WireError,
} from '../../client/wire.ts';
import { CONNECTION_REQUESTS_IN_FLIGHT_MAX, GRPC_FEED_WAIT_MS, GRPC_LIVE_STREAMS_PER_CONNECTION_MAX } from '../constants.ts';
import type { Dispatcher } from './dispatch.ts';
import { buildMessageSchema, checkMessage, resolveTypeName } from './grpc-strict.ts';
import { asFailure, notificationToPb, openSubscription, openWatch, pump, SUBSCRIBE_BATCHES_PER_MESSAGE_MAX, subscribedToPb, type PbSubscribeRequest, type PbWatchRequest } from './grpc-live.ts';
import {
  CelerFailure,
  type PbAppendRequest,
  type PbDeleteRequest,
  type PbDetailsRequest,
  type PbListSchemasRequest,
  type PbReadRequest,
  type PbReadShardRequest,
  type PbSchema,
  type PbTrimStartRequest,
  type PbWriteRequest,
  appendToWire,
  badRequest,
  batchesToPb,
  controlToPb,
  convert,
  deleteToWire,
  detailsToWire,
  expectOk,
  listSchemasToWire,
  readShardToPb,
  readShardToWire,
  readToWire,
  registerSchemaToWire,
  trimStartToWire,
  u64,
  writeResults,
  writeToWire,
} from './grpc-convert.ts';

export const PROTO_PATH = fileURLToPath(new URL('../../proto/celer/v1/eventstore.proto', import.meta.url));
export const SERVICE_NAME = 'celer.v1.EventStore';

/** Trailing-metadata keys carrying the Celer error (ASCII values). */
export const CELER_CODE_KEY = 'celer-code';
export const CELER_DETAIL_KEY = 'celer-detail';

/** How proto-loader turns messages into objects; the converters below rely on these. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
};

/** Celer error code → gRPC status code (SPEC §6; also documented in the .proto). */
export const GRPC_STATUS_BY_CODE: Readonly<Record<number, grpc.status>> = {
  [ErrorCode.ReadBelowTrimmed]: grpc.status.OUT_OF_RANGE,
  [ErrorCode.AggregateNotFound]: grpc.status.NOT_FOUND,
  [ErrorCode.AlreadyApplied]: grpc.status.ALREADY_EXISTS,
  // Not ABORTED: the same request will fail again until the caller re-reads the aggregate, and
  // keeping it apart from 2013 (ABORTED: resend the same request later) lets plain gRPC clients
  // choose the right reaction from the status code alone.
  [ErrorCode.WrongExpectedVersion]: grpc.status.FAILED_PRECONDITION,
  [ErrorCode.NotLeader]: grpc.status.UNAVAILABLE,
  [ErrorCode.ServerBusy]: grpc.status.RESOURCE_EXHAUSTED,
  [ErrorCode.DuplicateInFlight]: grpc.status.ABORTED,
  [ErrorCode.NotAcknowledged]: grpc.status.UNAVAILABLE,
  [ErrorCode.StorageFailed]: grpc.status.RESOURCE_EXHAUSTED,
  [ErrorCode.SchemaValidation]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.CrossShardWrite]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.BadRequest]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.ShardUnavailable]: grpc.status.UNAVAILABLE,
};

export function grpcStatusFor(code: number): grpc.status {
  return GRPC_STATUS_BY_CODE[code] ?? grpc.status.UNKNOWN;
}

/** JSON restricted to printable ASCII (gRPC metadata values must be). Still valid JSON. */
export function asciiJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)).replace(
    /[^\x20-\x7e]/g,
    (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'),
  );
}

function toServiceError(err: unknown): grpc.ServerErrorResponse {
  const failure = err instanceof CelerFailure ? err : null;
  const metadata = new grpc.Metadata();
  let code: grpc.status;
  let details: string;
  if (failure) {
    code = grpcStatusFor(failure.code);
    details = failure.message;
    metadata.set(CELER_CODE_KEY, String(failure.code));
    metadata.set(CELER_DETAIL_KEY, asciiJson(failure.detail));
  } else {
    // A defect in this file or below; the caller gets no Celer code because there is none.
    code = grpc.status.INTERNAL;
    details = `internal error: ${err instanceof Error ? err.message : String(err)}`;
  }
  return Object.assign(new Error(details), { code, details, metadata });
}

// The strict protobuf check lives in grpc-strict.ts.
export { buildMessageSchema, checkMessage, type MessageSchema } from './grpc-strict.ts';

/** What a request deserializer returns for a message that failed the strict check. */
class Rejected {
  readonly message: string;
  constructor(message: string) {
    this.message = message;
  }
}

export { CelerFailure } from './grpc-convert.ts';

// ---------------------------------------------------------------------------------------------
// Server

export interface GrpcServerHandle {
  /** "host:port" actually bound (port 0 resolved). */
  address: string;
  close(): Promise<void>;
}

export interface GrpcServerOptions {
  /** Transport credentials (mTLS); insecure when absent. */
  credentials?: grpc.ServerCredentials;
  /** Grace period for in-flight calls on close before they are cancelled. Default 5 s. */
  closeGraceMs?: number;
}

/** Splits "host:port" ("[v6]:port" for IPv6). */
function splitAddress(address: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(address);
  if (!m) throw new Error(`gRPC listen address must be host:port; got "${address}"`);
  return { host: m[1]!, port: Number(m[2]) };
}

type AnyHandler = grpc.handleUnaryCall<unknown, unknown> | grpc.handleServerStreamingCall<unknown, unknown>;

export async function startGrpcServer(dispatcher: Dispatcher, address: string, options: GrpcServerOptions = {}): Promise<GrpcServerHandle> {
  const { host } = splitAddress(address);
  const def = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const schema = buildMessageSchema(def);
  const service = def[SERVICE_NAME] as grpc.ServiceDefinition;

  // The same methods, with a request deserializer that refuses unknown fields.
  const strict: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(service)) {
    const requestType = resolveTypeName(def, SERVICE_NAME, (method as unknown as { requestType: { type: { name: string } } }).requestType.type.name);
    const decode = method.requestDeserialize;
    strict[name] = {
      ...method,
      requestDeserialize(buf: Buffer): unknown {
        try {
          checkMessage(schema, requestType, buf);
          return decode(buf);
        } catch (err) {
          return new Rejected(err instanceof WireError ? err.message : `malformed ${requestType}: ${err instanceof Error ? err.message : String(err)}`);
        }
      },
    };
  }

  const call = async (op: number, body: Uint8Array, okOp: number): Promise<Uint8Array> => expectOk(await dispatcher.dispatch(op, body), okOp);

  function unary<Req, Res>(run: (req: Req) => Promise<Res>): grpc.handleUnaryCall<unknown, unknown> {
    return (c, callback) => {
      const req = c.request;
      const p = req instanceof Rejected ? Promise.reject(badRequest(req.message)) : run(req as Req);
      p.then(
        (res) => callback(null, res),
        (err: unknown) => callback(toServiceError(err)),
      );
    };
  }

  const handlers: Record<string, AnyHandler> = {
    Append: unary(async (req: PbAppendRequest) => {
      const body = convert(() => appendToWire(req));
      const result = writeResults(await call(Op.Write, body, Op.WriteOk))[0];
      if (result === undefined) throw new Error('the write response holds no result');
      return result;
    }),
    Write: unary(async (req: PbWriteRequest) => {
      const body = convert(() => writeToWire(req));
      return { results: writeResults(await call(Op.Write, body, Op.WriteOk)) };
    }),
    Read: unary(async (req: PbReadRequest) => {
      const body = convert(() => readToWire(req));
      const ok = decodeReadOk(await call(Op.Read, body, Op.ReadOk));
      return { batches: batchesToPb(ok.batches), nextVersion: ok.nextVersion.toString() };
    }),
    Details: unary(async (req: PbDetailsRequest) => {
      const body = convert(() => detailsToWire(req));
      const d = decodeDetailsOk(await call(Op.Details, body, Op.DetailsOk));
      return {
        version: d.version.toString(),
        minVersion: d.minVersion.toString(),
        lastPosition: { shard: d.shard, seq: d.lastSeq.toString() },
        lastClientId: d.lastClientId.toString(),
        lastServerTimestampMs: String(d.lastServerTimestampMs),
        deleted: d.deleted,
      };
    }),
    Delete: unary(async (req: PbDeleteRequest) => {
      const body = convert(() => deleteToWire(req));
      return controlToPb(decodeControlOk(await call(Op.Delete, body, Op.DeleteOk)));
    }),
    TrimStart: unary(async (req: PbTrimStartRequest) => {
      const body = convert(() => trimStartToWire(req));
      return controlToPb(decodeControlOk(await call(Op.Trim, body, Op.TrimOk)));
    }),
    ReadShard: unary(async (req: PbReadShardRequest) => {
      const body = convert(() => readShardToWire(req));
      return readShardToPb(decodeReadShardOk(await call(Op.ReadShard, body, Op.ReadShardOk)));
    }),
    RegisterSchema: unary(async (req: PbSchema) => {
      const body = convert(() => registerSchemaToWire(req));
      return decodeRegisterSchemaOk(await call(Op.RegisterSchema, body, Op.RegisterSchemaOk));
    }),
    ListSchemas: unary(async (req: PbListSchemasRequest) => {
      const body = convert(() => listSchemasToWire(req));
      const schemas = decodeListSchemasOk(await call(Op.ListSchemas, body, Op.ListSchemasOk));
      return {
        schemas: schemas.map((x) => ({
          org: x.org.toString(),
          type: x.type.toString(),
          eventType: x.eventType,
          version: { major: x.major, minor: x.minor },
          format: x.format,
          schema: x.schema,
        })),
      };
    }),
    SubscribeShard: ((stream: grpc.ServerWritableStream<unknown, unknown>) => {
      live(stream, () => subscribeShard(stream));
    }) as grpc.handleServerStreamingCall<unknown, unknown>,
    Subscribe: ((stream: grpc.ServerWritableStream<unknown, unknown>) => {
      live(stream, () => {
        const { it, key } = convert(() => openSubscription(dispatcher, stream.request as PbSubscribeRequest));
        return pump(stream, it, (items) => ({ batches: items.map((b) => subscribedToPb(b, key)) }), SUBSCRIBE_BATCHES_PER_MESSAGE_MAX);
      });
    }) as grpc.handleServerStreamingCall<unknown, unknown>,
    Watch: ((stream: grpc.ServerWritableStream<unknown, unknown>) => {
      live(stream, () => pump(stream, convert(() => openWatch(dispatcher, stream.request as PbWatchRequest)), (items) => notificationToPb(items[0]!), 1));
    }) as grpc.handleServerStreamingCall<unknown, unknown>,
    ReadAll: ((stream: grpc.ServerWritableStream<unknown, unknown>) => {
      readAll(stream).catch((err: unknown) => {
        if (!stream.cancelled) stream.emit('error', toServiceError(err));
      });
    }) as grpc.handleServerStreamingCall<unknown, unknown>,
  };

  /** Live streams per gRPC connection (its peer address), at most GRPC_LIVE_STREAMS_PER_CONNECTION_MAX. */
  const liveStreams = new Map<string, number>();

  /** Runs a SubscribeShard, Subscribe or Watch call: counted against its connection's bound; its errors, the client library's included, end the stream with their code. */
  function live(stream: grpc.ServerWritableStream<unknown, unknown>, run: () => Promise<void>): void {
    const req = stream.request;
    const peer = stream.getPeer();
    const open = liveStreams.get(peer) ?? 0;
    let p: Promise<void>;
    if (req instanceof Rejected) p = Promise.reject(badRequest(req.message));
    else if (open >= GRPC_LIVE_STREAMS_PER_CONNECTION_MAX) {
      p = Promise.reject(
        new CelerFailure(
          ErrorCode.ServerBusy,
          `this gRPC connection has ${open} subscription or watch streams open, its limit (GRPC_LIVE_STREAMS_PER_CONNECTION_MAX ${GRPC_LIVE_STREAMS_PER_CONNECTION_MAX}); open another channel for more, or share one subscription between readers`,
          { limit: 'GRPC_LIVE_STREAMS_PER_CONNECTION_MAX', max: GRPC_LIVE_STREAMS_PER_CONNECTION_MAX },
        ),
      );
    } else {
      liveStreams.set(peer, open + 1);
      p = Promise.resolve()
        .then(run)
        .finally(() => {
          const n = (liveStreams.get(peer) ?? 1) - 1;
          if (n === 0) liveStreams.delete(peer);
          else liveStreams.set(peer, n);
        });
    }
    p.then(
      () => {
        if (!stream.cancelled) stream.end();
      },
      (err: unknown) => {
        if (!stream.cancelled) stream.emit('error', toServiceError(asFailure(err)));
      },
    );
  }

  /** Follows pages until the end (or `to`), one streamed message per non-empty page. */
  async function readAll(stream: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
    const req = stream.request;
    if (req instanceof Rejected) throw badRequest(req.message);
    const r = req as PbReadRequest;
    // 0: from the first readable version (after trims).
    let from = u64(r.from);
    const closed = new Promise<void>((resolve) => {
      stream.once('cancelled', () => resolve());
      stream.once('close', () => resolve());
    });
    for (;;) {
      if (stream.cancelled) return;
      const body = convert(() => readToWire(r, from));
      const ok = decodeReadOk(await call(Op.Read, body, Op.ReadOk));
      if (stream.cancelled) return;
      if (ok.batches.length > 0) {
        // One page in flight at a time: the next page is read only once the transport has taken
        // this one, so a slow reader does not make the server buffer pages (up to 8 MiB each).
        const message = { batches: batchesToPb(ok.batches) };
        await Promise.race([new Promise<void>((resolve) => stream.write(message, () => resolve())), closed]);
      }
      if (ok.nextVersion === 0n) break;
      // From 0 (the first readable version, at least 1) a page covers at least version 1.
      if (ok.nextVersion <= (from === 0n ? 1n : from)) throw new Error(`read page did not advance (from ${from}, next ${ok.nextVersion})`);
      from = ok.nextVersion;
    }
    stream.end();
  }

  /** The shard feed, then its tail (long polls of GRPC_FEED_WAIT_MS), one page in flight, until cancelled. */
  async function subscribeShard(stream: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
    const req = stream.request;
    if (req instanceof Rejected) throw badRequest(req.message);
    const r = req as PbReadShardRequest;
    let from = u64(r.from);
    if (from === 0n) from = 1n;
    const closed = new Promise<void>((resolve) => {
      stream.once('cancelled', () => resolve());
      stream.once('close', () => resolve());
    });
    while (!stream.cancelled) {
      const body = convert(() => readShardToWire(r, from, GRPC_FEED_WAIT_MS));
      const ok = decodeReadShardOk(await call(Op.ReadShard, body, Op.ReadShardOk));
      if (stream.cancelled) return;
      if (ok.batches.length > 0) await Promise.race([new Promise<void>((resolve) => stream.write(readShardToPb(ok), () => resolve())), closed]);
      if (ok.next > from) from = ok.next;
    }
  }

  const server = new grpc.Server({
    'grpc.max_receive_message_length': Limits.frameBytesMax,
    'grpc.max_send_message_length': Limits.frameBytesMax,
    // Calls in flight per connection, as on the native protocol: sent to the client as HTTP/2
    // SETTINGS_MAX_CONCURRENT_STREAMS, so it queues further calls in order (backpressure) rather
    // than the server refusing them; a client that ignores the setting gets REFUSED_STREAM.
    'grpc.max_concurrent_streams': CONNECTION_REQUESTS_IN_FLIGHT_MAX,
  });
  server.addService(strict as grpc.ServiceDefinition, handlers as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(address, options.credentials ?? grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  const graceMs = options.closeGraceMs ?? 5000;
  let closing: Promise<void> | undefined;
  return {
    address: `${host}:${port}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        timer.unref();
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      return closing;
    },
  };
}
