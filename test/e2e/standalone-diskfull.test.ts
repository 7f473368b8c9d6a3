// A real full disk (SPEC §6, error 2008): a standalone node on a small ext4 filesystem of its own
// (hack/loopfs.sh, a loop device), filled with a ballast file while writers run. Writes must be
// refused with 2008 and detail diskFull, reads of committed data must go on, the node must stay up,
// and writes must come back by themselves once the ballast is deleted. Needs root and loop devices;
// without them the suite fails (it does not skip): CI must not pass it without having run it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { open, rm, statfs } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { CelerError, connect, type AggregateKey, type CelerClient } from '@celer/client';
import { STATS_INTERVAL_MS } from '../../dataplane/constants.ts';
import { removeDir, ROOT, runCeler, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';

const run = promisify(execFile);
const te = new TextEncoder();
const td = new TextDecoder();
const LOOPFS = join(ROOT, 'hack/loopfs.sh');

/** 200 MB: room for the node's first 8 MiB segment and a few more, and small enough that
 * fallocate plus a few MiB of zeros fill it in well under a second. */
const FS_MB = 200;
const SEGMENT_MB = 8;
/** Load writers. Each event is EVENT_BYTES, so the 8 MiB segment the ballast leaves no successor
 * room for fills in a couple of seconds (~2k writes) and the next rotation hits ENOSPC. */
const WRITERS = 8;
const EVENT_BYTES = 4096;
/** Longest wait for the first refusal once the disk is full: the writers must get through the rest
 * of the active segment (8 MiB) first; a second here, 60 s on a loaded 2-core machine. */
const REFUSAL_DEADLINE_MS = 60_000;
/** Longest wait for every writer to succeed again once the ballast is gone. ext4 may hand freed
 * blocks out only once its journal commits (every 5 s by default); the rest is the engine's retry. */
const RESUME_DEADLINE_MS = 60_000;
/** Refusals to collect (and for at least this long after the first) before judging them. */
const REFUSALS_MIN = 20;
const REFUSING_MIN_MS = 1000;
/** Pause of a writer after a refusal: keeps a refused node from being hammered by a hot loop. */
const RETRY_PAUSE_MS = 20;
const POLL_MS = 50;

const pause = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function loopfs(...args: string[]): Promise<void> {
  try {
    await run('bash', [LOOPFS, ...args]);
  } catch (e) {
    const x = e as { stderr?: string; message: string };
    throw new Error(`hack/loopfs.sh ${args.join(' ')} failed (this suite needs root and loop devices; it does not skip): ${x.stderr ?? x.message}`);
  }
}

/** Polls `cond` until it holds or `ms` pass; returns whether it held. */
async function waitFor(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const until = performance.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (performance.now() > until) return false;
    await pause(POLL_MS);
  }
}

/**
 * Fills the filesystem of `dir` with the file `path`, leaving about `leaveBytes` free: fallocate
 * for the bulk, then zeros in shrinking chunks until the kernel says ENOSPC (leaveBytes = 0) or
 * the target is reached. Returns the ballast's size.
 */
async function fillDisk(dir: string, path: string, leaveBytes = 0): Promise<number> {
  const free = async (): Promise<number> => {
    const s = await statfs(dir);
    return s.bavail * s.bsize;
  };
  // fallocate is all-or-nothing in practice only with room to spare: keep a few MiB for the zeros.
  const bulk = (await free()) - leaveBytes - 4 * 1024 * 1024;
  if (bulk > 0) await run('fallocate', ['-l', String(bulk), path]);
  const fh = await open(path, 'a');
  let size = Math.max(bulk, 0);
  try {
    for (const chunk of [1024 * 1024, 64 * 1024, 4096]) {
      const zeros = Buffer.alloc(chunk);
      // Delayed allocation may give back reserved blocks at fsync: go round until a pass writes nothing.
      for (let wrote = true; wrote; ) {
        wrote = false;
        while ((leaveBytes === 0 || (await free()) - chunk >= leaveBytes)) {
          try {
            await fh.write(zeros);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code === 'ENOSPC') break;
            throw e;
          }
          size += chunk;
          wrote = true;
        }
        try {
          await fh.sync();
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
        }
      }
    }
  } finally {
    await fh.close();
  }
  return size;
}

/** What a refused (or failed) request answered, for the failure messages. */
interface Refusal {
  code: number | string;
  message: string;
  diskFull: unknown;
  phase: Phase;
}
type Phase = 'before-fill' | 'full' | 'freed';

const describeRefusals = (rs: Refusal[]): string => {
  const byCode = new Map<string, { n: number; first: Refusal }>();
  for (const r of rs) {
    const k = `${r.phase}/${r.code}`;
    const e = byCode.get(k);
    if (e) e.n++;
    else byCode.set(k, { n: 1, first: r });
  }
  return [...byCode].map(([k, { n, first }]) => `${k} ×${n} (first: "${first.message}", detail.diskFull=${String(first.diskFull)})`).join('; ') || 'none';
};

/** One load writer: its own aggregate, optimistic concurrency, the text of every acked version. */
interface Writer {
  key: AggregateKey;
  /** acked[v - 1] = the text of version v. */
  acked: string[];
  lastAckMs: number;
}

const eventText = (label: string): string => label.padEnd(EVENT_BYTES, '.');

async function readTexts(c: CelerClient, key: AggregateKey): Promise<string[]> {
  const texts: string[] = [];
  for await (const b of c.readAll(key)) for (const e of b.events) texts.push(td.decode(e.data));
  return texts;
}

let base: string;
let mnt: string;
let ballast: string;
let node: CelerProcess | null = null;
let writerClient: CelerClient | null = null;
let readerClient: CelerClient | null = null;
const mounts: string[] = [];

/** Aggregates written before the load, with the texts of their events. */
const baseline = new Map<number, string[]>();
const writers: Writer[] = [];
const refusals: Refusal[] = [];
let phase: Phase = 'before-fill';
let stopLoad = false;
let loadDone: Promise<void> = Promise.resolve();
let filledAtMs = 0;
let freedAtMs = 0;

before(async () => {
  base = await tempDir('celer-e2e-diskfull-');
  mnt = join(base, 'mnt');
  mounts.push(mnt);
  await loopfs('mount', mnt, String(FS_MB));
  ballast = join(mnt, 'ballast');
  node = await startCeler(join(mnt, 'data'), ['--shards', '1', '--segment-mb', String(SEGMENT_MB)]);
  writerClient = await connect(node.native, { clientId: 1, requestTimeoutMs: 10_000 });
  readerClient = await connect(node.native, { clientId: 2, requestTimeoutMs: 10_000 });
  for (let id = 0; id < 100; id++) {
    const texts = [0, 1, 2].map((v) => `baseline ${id} v${v + 1}`);
    await writerClient.append({ org: 1, type: 1, id }, texts.map((t) => ({ type: 'Base', data: te.encode(t) })), { expectedVersion: 0 });
    baseline.set(id, texts);
  }
});

after(async () => {
  stopLoad = true;
  await loadDone.catch(() => {});
  await writerClient?.close();
  await readerClient?.close();
  // Stop the node before the unmount: a process holding files there makes umount fail.
  await node?.kill('SIGKILL');
  const errors: string[] = [];
  for (const m of mounts) await loopfs('umount', m).catch((e: Error) => errors.push(e.message));
  // Never rm -rf through a filesystem that is still mounted: leave it for a person to look at.
  if (errors.length > 0) throw new Error(`${errors.join('\n')}\n(left ${base} in place)`);
  await removeDir(base);
});

function startLoad(c: CelerClient): void {
  for (let w = 0; w < WRITERS; w++) writers.push({ key: { org: 2, type: 1, id: w }, acked: [], lastAckMs: 0 });
  loadDone = Promise.all(
    writers.map(async (w) => {
      for (let attempt = 0; !stopLoad; attempt++) {
        const v = w.acked.length;
        // The attempt number makes every try's text unique: a refused write that surfaced later
        // would show up as a wrong text, not pass as the retry that succeeded.
        const text = eventText(`load ${w.key.id} v${v + 1} try ${attempt}`);
        try {
          await c.append(w.key, [{ type: 'Tick', data: te.encode(text) }], { expectedVersion: v });
          w.acked.push(text);
          w.lastAckMs = performance.now();
        } catch (e) {
          const detail: Record<string, unknown> = e instanceof CelerError ? { ...e.detail } : {};
          const code = e instanceof CelerError ? e.code : String((e as { code?: unknown }).code ?? (e as Error).name);
          refusals.push({ code, message: (e as Error).message, diskFull: detail['diskFull'], phase });
          await pause(RETRY_PAUSE_MS);
        }
      }
    }),
  ).then(() => {});
}

const ackCount = (): number => writers.reduce((n, w) => n + w.acked.length, 0);

test('writes refused while the disk is full get 2008 with detail diskFull and a message saying so (no other code but 2012)', async () => {
  startLoad(writerClient!);
  // Let the load get going on a disk with room, so it is writing when the disk fills.
  assert.ok(await waitFor(() => ackCount() >= 100, 30_000), `the load made only ${ackCount()} acks in 30 s; refusals: ${describeRefusals(refusals)}`);
  phase = 'full';
  const ballastBytes = await fillDisk(mnt, ballast);
  filledAtMs = performance.now();
  const acksAtFill = ackCount();
  const inPhase = (): Refusal[] => refusals.filter((r) => r.phase === 'full');
  let firstRefusalMs = 0;
  const refused = await waitFor(() => {
    const rs = inPhase();
    if (rs.length > 0 && firstRefusalMs === 0) firstRefusalMs = performance.now();
    return rs.length >= REFUSALS_MIN && firstRefusalMs > 0 && performance.now() - firstRefusalMs >= REFUSING_MIN_MS;
  }, REFUSAL_DEADLINE_MS);
  const rs = inPhase();
  assert.ok(
    rs.length > 0,
    `no write was refused within ${REFUSAL_DEADLINE_MS} ms of filling the disk (ballast ${ballastBytes} bytes, ` +
      `${(await statfs(mnt)).bavail} blocks free; ${ackCount() - acksAtFill} writes acked since)`,
  );
  assert.ok(refused, `only ${rs.length} refusals in ${REFUSAL_DEADLINE_MS} ms: ${describeRefusals(rs)}`);
  const bad = rs.filter((r) => r.code !== 2008 && r.code !== 2012);
  assert.equal(bad.length, 0, `writes on a full disk failed with codes other than 2008 and 2012: ${describeRefusals(rs)}`);
  const full = rs.filter((r) => r.code === 2008);
  assert.ok(full.length > 0, `no 2008 among the refusals: ${describeRefusals(rs)}`);
  for (const r of full) {
    assert.equal(r.diskFull, true, `2008 without detail diskFull: true: "${r.message}"`);
    assert.match(r.message, /disk\b.{0,40}\bfull/i, 'the 2008 message must say the disk is full');
  }
});

/** Every acknowledged write reads back: the baseline exactly, each load writer's acked prefix. */
async function assertAllReadable(c: CelerClient, when: string, exact: boolean): Promise<void> {
  const problems: string[] = [];
  const check = async (name: string, key: AggregateKey, want: string[], inFlight: () => number): Promise<void> => {
    let got: string[];
    try {
      got = await readTexts(c, key);
    } catch (e) {
      problems.push(`${name}: read failed with ${(e as { code?: unknown }).code ?? '?'}: ${(e as Error).message}`);
      return;
    }
    const prefixOk = want.every((t, i) => got[i] === t);
    // A writer may have one write in flight whose ack had not come when `want` was taken.
    const lengthOk = exact ? got.length === want.length : got.length >= want.length && got.length <= inFlight();
    if (!prefixOk || !lengthOk) {
      const firstBad = want.findIndex((t, i) => got[i] !== t);
      problems.push(`${name}: acked ${want.length} events, read ${got.length}${firstBad >= 0 ? `; version ${firstBad + 1} differs` : ''}`);
    }
  };
  for (const [id, texts] of baseline) await check(`baseline ${id}`, { org: 1, type: 1, id }, texts, () => texts.length);
  for (const w of writers) await check(`load ${w.key.id}`, w.key, [...w.acked], () => w.acked.length + 1);
  assert.deepEqual(problems.slice(0, 10), [], `${when}: ${problems.length} aggregates do not read back as acknowledged`);
}

test('reads of every acknowledged write go on while the disk is full', async () => {
  assert.ok(filledAtMs > 0, 'the disk was never filled (the first test failed early)');
  const refusedBefore = refusals.length;
  await assertAllReadable(readerClient!, 'while the disk is full', false);
  // Still refusing: the reads above ran beside a write load that the full disk kept failing.
  assert.ok(await waitFor(() => refusals.length > refusedBefore, 5000), 'the writers stopped being refused during the reads');
});

test('the node stays up while the disk is full: /livez 200, /readyz ready or not ready because the disk is full', async () => {
  assert.ok(filledAtMs > 0, 'the disk was never filled (the first test failed early)');
  const n = node!;
  // /readyz and /status lag the shards by up to one stats interval: watch them for a few.
  const watchUntil = performance.now() + 3 * STATS_INTERVAL_MS;
  for (let sample = 0; sample === 0 || performance.now() < watchUntil; sample++) {
    assert.equal(n.proc.exitCode, null, `the node exited with ${n.proc.exitCode}; stderr: ${n.stderr()}`);
    assert.equal(n.proc.signalCode, null, `the node died of ${n.proc.signalCode}`);
    const live = await fetch(`http://${n.http}/livez`);
    assert.equal(live.status, 200);
    // Either answer is sane: ready (reads are served, the node is not broken) or not ready with the
    // disk as the reason. Not ready because a shard "failed" is not: nothing broke, the disk is full.
    const ready = await fetch(`http://${n.http}/readyz`);
    const body = (await ready.text()).trim();
    if (ready.status !== 200) {
      assert.equal(ready.status, 503, body);
      assert.match(body, /disk\b.{0,40}\bfull/i, `/readyz is not ready for a reason other than the full disk: ${body}`);
    }
    const status = (await (await fetch(`http://${n.http}/status`)).json()) as { shards: { state: string; reason?: string }[] };
    const stopped = status.shards.filter((s) => s.state === 'failed' || s.state === 'corrupt');
    assert.deepEqual(stopped, [], 'a shard stopped serving because the disk is full');
    await pause(POLL_MS);
  }
});

test('once the ballast is deleted, writes succeed again by themselves, without a restart', async () => {
  assert.ok(filledAtMs > 0, 'the disk was never filled (the first test failed early)');
  const pid = node!.proc.pid;
  phase = 'freed';
  await rm(ballast);
  freedAtMs = performance.now();
  const resumed = await waitFor(() => writers.every((w) => w.lastAckMs > freedAtMs), RESUME_DEADLINE_MS);
  const after = refusals.filter((r) => r.phase === 'freed');
  assert.ok(
    resumed,
    `${writers.filter((w) => w.lastAckMs <= freedAtMs).length} of ${WRITERS} writers still had no ack ${RESUME_DEADLINE_MS} ms after the ballast ` +
      `was deleted; refusals since: ${describeRefusals(after)}`,
  );
  assert.equal(node!.proc.pid, pid);
  assert.equal(node!.proc.exitCode, null, 'the node exited');
  const bad = after.filter((r) => r.code !== 2008 && r.code !== 2012);
  assert.equal(bad.length, 0, `writes failed with codes other than 2008 and 2012 after the ballast was deleted: ${describeRefusals(after)}`);
  stopLoad = true;
  await loadDone;
  // A fresh aggregate too (a new key, not only ones whose state is cached).
  await writerClient!.append({ org: 3, type: 1, id: 1 }, [{ type: 'After', data: te.encode('after the disk was freed') }], { expectedVersion: 0 });
  const ready = await fetch(`http://${node!.http}/readyz`);
  assert.equal(ready.status, 200, await ready.text());
});

test('every write acknowledged at any point reads back with the right events once the disk has room', async () => {
  assert.ok(freedAtMs > 0, 'the disk was never freed (an earlier test failed early)');
  // Normally stopped by the test before; stopped here too, so a failure there still shows the reads.
  stopLoad = true;
  await loadDone;
  await assertAllReadable(readerClient!, 'after the disk was freed', true);
  assert.deepEqual(await readTexts(readerClient!, { org: 3, type: 1, id: 1 }), ['after the disk was freed']);
});

test('celer verify passes on the data directory after the node stops', async () => {
  assert.ok(node !== null);
  await writerClient?.close();
  await readerClient?.close();
  writerClient = readerClient = null;
  await node.stop();
  node = null;
  const v = await runCeler(['verify', '--data-dir', join(mnt, 'data')]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
});

test('a node whose disk is too full for its first segment refuses to start, says the disk is full, and starts once there is room', async () => {
  const small = join(base, 'small');
  mounts.push(small);
  await loopfs('mount', small, '64');
  const dataDir = join(small, 'data');
  const smallBallast = join(small, 'ballast');
  // Room for the directories and metadata files, not for an 8 MiB segment.
  await fillDisk(small, smallBallast, 1024 * 1024);
  const started = await startCeler(dataDir, ['--shards', '1', '--segment-mb', String(SEGMENT_MB)]).catch((e: unknown) => e as Error);
  if (!(started instanceof Error)) {
    const ready = await fetch(`http://${started.http}/readyz`);
    const body = await ready.text();
    await started.kill('SIGKILL');
    assert.fail(`the node started on a disk without room for its first segment (/readyz ${ready.status}: ${body.trim()}); stderr: ${started.stderr()}`);
  }
  assert.match(started.message, /exited with [1-9]\d* before it was ready/, started.message);
  assert.match(started.message, /disk\b.{0,40}\bfull/i, `the refusal must say the disk is full: ${started.message}`);
  // A failed first start must not leave a data directory the next start cannot open.
  await rm(smallBallast);
  const again = await startCeler(dataDir, ['--shards', '1', '--segment-mb', String(SEGMENT_MB)]);
  try {
    const c = await connect(again.native, { clientId: 1 });
    try {
      await c.append({ org: 1, type: 1, id: 1 }, [{ type: 'E', data: te.encode('first') }], { expectedVersion: 0 });
      assert.deepEqual(await readTexts(c, { org: 1, type: 1, id: 1 }), ['first']);
    } finally {
      await c.close();
    }
  } finally {
    await again.stop();
  }
  const v = await runCeler(['verify', '--data-dir', dataDir]);
  assert.equal(v.code, 0, v.stdout + v.stderr);
});
