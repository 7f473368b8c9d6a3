// The seam between the network front ends (native TCP, gRPC, HTTP) and the shard workers.
// Front ends speak the wire encodings in client/wire.ts: they turn their request into a wire
// request body, call dispatch, and turn the wire response body back into their own format.

export interface DispatchResult {
  /** Op.WriteOk / Op.ReadOk / Op.DetailsOk / Op.Pong, or Op.Error with an encodeError body. */
  op: number;
  body: Uint8Array;
}

export interface Dispatcher {
  /**
   * Validates the request (9100 on malformed input, 9001 when a write spans shards), routes it to
   * the worker thread that owns its shard, and resolves with the response. Never rejects: every
   * failure comes back as an Op.Error response. Over a node-wide bound (DISPATCH_IN_FLIGHT_MAX
   * requests or DISPATCH_BYTES_IN_FLIGHT_MAX body bytes not yet answered) the answer is 2012 at
   * once, naming the bound. Bounds per connection are the front end's (the native server and
   * gRPC stop taking requests from a connection with CONNECTION_REQUESTS_IN_FLIGHT_MAX in flight).
   */
  dispatch(op: number, body: Uint8Array): Promise<DispatchResult>;
}
