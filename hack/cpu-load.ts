// A steady CPU load of CORES (0 < CORES ≤ 1) of one core for SECONDS, in 1 ms slices spread
// evenly over time, the way deliveries to subscribers arrive. For measuring how sensitive W1 is to
// any other work on the node's machine: run `celer bench` once without it and once beside it (see
// "Live subscribers during W1" in the README).
//
//   node_modules/.bin/node hack/cpu-load.ts 0.3 12 & bin/celer bench --addr ... --duration-s 10 --warmup-s 2
const SLICE_MS = 1;

const [coresArg, secondsArg] = process.argv.slice(2);
const cores = Number(coresArg);
const seconds = Number(secondsArg);
if (!(cores > 0 && cores <= 1) || !(seconds > 0)) {
  console.error('usage: node hack/cpu-load.ts CORES SECONDS   (0 < CORES <= 1: the share of one core to keep busy)');
  process.exit(2);
}
const periodMs = SLICE_MS / cores;
const endAt = performance.now() + seconds * 1000;
let busyMs = 0;

function slice(): void {
  const start = performance.now();
  while (performance.now() - start < SLICE_MS);
  busyMs += performance.now() - start;
  if (performance.now() < endAt) setTimeout(slice, Math.max(0, periodMs - SLICE_MS));
  else console.error(`cpu-load: ${(busyMs / 1000).toFixed(1)} s busy over ${seconds} s (${(busyMs / 1000 / seconds).toFixed(2)} cores)`);
}
slice();
