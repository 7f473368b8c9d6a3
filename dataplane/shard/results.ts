// What a shard answers: a response (op + body), the coded error responses, and Refusal, which carries
// an error response out of an await.
import { Op, encodeError } from '../../client/wire.ts';

export interface ShardResult {
  op: number;
  body: Uint8Array;
}

export function err(code: number, message: string, detail: Record<string, unknown> = {}): ShardResult {
  return { op: Op.Error, body: encodeError(code, message, detail) };
}

/** A request refused after an await; carries its error response. */
export class Refusal extends Error {
  readonly result: ShardResult;
  constructor(result: ShardResult) {
    super('refused');
    this.result = result;
  }
}
