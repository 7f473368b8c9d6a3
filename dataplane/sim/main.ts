// `npm run sim -- --seeds N [--from S] [--seed S] [--scenario NAME] [--verbose]`: runs the
// deterministic cluster simulator (cluster-sim.ts) over seeds and prints progress and a summary.
// --unsafe-ack-before-fsync / --unsafe-takeover-after-ms N / --unsafe-handover-from-read run a deliberately broken protocol
// (what the teeth tests do), to replay their failing seeds.
import { isScenario, SCENARIOS, type Scenario } from './faults.ts';
import { replayCommand, runSeed, type SimOptions, type SimResult } from './cluster-sim.ts';

function usage(msg: string): never {
  console.error(`${msg}\nusage: npm run sim -- --seeds N [--from S] | --seed S  [--scenario ${Object.keys(SCENARIOS).join('|')}] [--verbose]`);
  process.exit(2);
}

const args = process.argv.slice(2);
let seeds = 100;
let from = 1;
let one: number | null = null;
let scenario: Scenario | undefined;
let verbose = false;
const unsafe: NonNullable<SimOptions['unsafe']> = {};
for (let i = 0; i < args.length; i++) {
  const a = args[i]!;
  const val = (): string => args[++i] ?? usage(`${a} needs a value`);
  if (a === '--seeds') seeds = Number(val());
  else if (a === '--from') from = Number(val());
  else if (a === '--seed') one = Number(val());
  else if (a === '--scenario') {
    const s = val();
    if (!isScenario(s)) usage(`unknown scenario ${s}`);
    scenario = s;
  } else if (a === '--verbose') verbose = true;
  else if (a === '--unsafe-ack-before-fsync') unsafe.ackBeforeFsync = true;
  else if (a === '--unsafe-takeover-after-ms') unsafe.takeoverAfterMs = Number(val());
  else if (a === '--unsafe-handover-from-read') unsafe.handoverFromRead = true;
  else usage(`unknown argument ${a}`);
}
if (!Number.isSafeInteger(seeds) || seeds < 1 || !Number.isSafeInteger(from)) usage('--seeds and --from take integers');

const list = one !== null ? [one] : Array.from({ length: seeds }, (_, i) => from + i);
const t0 = process.hrtime.bigint();
const failed: SimResult[] = [];
const known = new Map<string, number[]>();
let virtual = 0;
for (const [k, seed] of list.entries()) {
  const opts: SimOptions = { seed, keepTrace: verbose && list.length === 1 };
  if (scenario !== undefined) opts.scenario = scenario;
  if (Object.keys(unsafe).length > 0) opts.unsafe = unsafe;
  const r = await runSeed(opts);
  virtual += r.virtualMs;
  if (r.knownBug !== null) known.set(r.knownBug, [...(known.get(r.knownBug) ?? []), seed]);
  else if (r.failures.length > 0) failed.push(r);
  if (verbose || r.failures.length > 0) console.log(`${r.failures.length === 0 ? 'ok  ' : r.knownBug !== null ? `KNOWN BUG ${r.knownBug}:` : 'FAIL'} ${r.summary}`);
  if (r.failures.length > 0) {
    for (const f of r.failures.slice(0, 10)) console.log(`     - ${f}`);
    console.log(`     replay: ${replayCommand(seed, opts.scenario, opts.unsafe)}`);
  }
  if (verbose && list.length === 1) for (const l of r.trace) console.log(`  | ${l}`);
  if (!verbose && (k + 1) % 50 === 0) console.log(`${k + 1}/${list.length} seeds, ${failed.length} failed, ${(Number(process.hrtime.bigint() - t0) / 1e9).toFixed(1)} s`);
}
const wall = Number(process.hrtime.bigint() - t0) / 1e9;
const knownCount = [...known.values()].reduce((n, l) => n + l.length, 0);
for (const [name, l] of known) console.log(`known bug ${name}: seeds ${l.slice(0, 30).join(', ')}${l.length > 30 ? ` … (${l.length})` : ''}`);
console.log(`\n${list.length} seeds run (${list[0]}..${list[list.length - 1]}${scenario !== undefined ? `, scenario ${scenario}` : ''}): ${list.length - failed.length - knownCount} clean, ${knownCount} failed on known bugs, ${failed.length} failed otherwise${failed.length > 0 ? ` (seeds ${failed.map((r) => r.seed).join(', ')})` : ''}; wall ${wall.toFixed(1)} s, virtual ${(virtual / 1000).toFixed(0)} s`);
process.exit(failed.length > 0 ? 1 : 0);
