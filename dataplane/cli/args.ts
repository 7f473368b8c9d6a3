// Flag parsing shared by the `celer` commands: strict parseArgs, integer flags, usage errors.
import { parseArgs, type ParseArgsConfig } from 'node:util';

/** A bad command line: main prints it with the usage hint and exits 2. */
export class UsageError extends Error {}

export function parse<T extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: T, positionals = 0) {
  try {
    const r = parseArgs({ args, options: { ...options, help: { type: 'boolean' } }, allowPositionals: positionals > 0, strict: true });
    if (r.positionals.length !== positionals) throw new UsageError(`expected ${positionals} argument(s), got ${r.positionals.length}`);
    return r;
  } catch (e) {
    throw new UsageError((e as Error).message);
  }
}

export function int(v: string | undefined, name: string, min = 0): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`${name} must be an integer ≥ ${min}; got "${v}"`);
  return n;
}
