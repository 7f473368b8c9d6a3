import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { promisify } from 'node:util';
import { DataDirLockedError } from './disk.ts';
import { DataDirLockUnavailableError, LOCK_FILE, lockDataDir } from './lock.ts';

const LOCK_TS_URL = new URL('./lock.ts', import.meta.url).href;

function scratch(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'celer-lock-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Prints one JSON line `{ pid, locked: true }` once it holds `dir`'s lock, then waits to be killed. */
function holderScript(dir: string): string {
  return `
    const { lockDataDir } = await import(${JSON.stringify(LOCK_TS_URL)});
    await lockDataDir(${JSON.stringify(dir)});
    console.log(JSON.stringify({ pid: process.pid, locked: true }));
    setInterval(() => {}, 1 << 30);
  `;
}

/** Prints one JSON line: what lockDataDir did in this process (`{ pid, took }` or `{ pid, error }`). */
function contenderScript(dir: string): string {
  return `
    const { lockDataDir } = await import(${JSON.stringify(LOCK_TS_URL)});
    try {
      await lockDataDir(${JSON.stringify(dir)});
      console.log(JSON.stringify({ pid: process.pid, took: true }));
    } catch (err) {
      console.log(JSON.stringify({ pid: process.pid, error: err.name, message: err.message }));
    }
  `;
}

/** Spawns `argv` and resolves with it and its first stdout line (the holder's "locked" line). */
function spawnHolder(t: TestContext, argv: string[]): Promise<{ child: ChildProcess; first: { pid: number; locked: boolean } }> {
  const child = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  return new Promise((resolve, reject) => {
    child.once('exit', (code, signal) => reject(new Error(`holder exited (${code ?? signal}) before locking: ${stderr}`)));
    createInterface({ input: child.stdout! }).once('line', (line) => {
      child.removeAllListeners('exit');
      resolve({ child, first: JSON.parse(line) as { pid: number; locked: boolean } });
    });
  });
}

function killAndWait(child: ChildProcess): Promise<void> {
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.kill('SIGKILL');
  return exited;
}

const node = (script: string): string[] => [process.execPath, '--input-type=module', '-e', script];

test('a directory locked by another process is refused, and free again once that process is killed', async (t) => {
  const dir = scratch(t);
  const { child, first } = await spawnHolder(t, node(holderScript(dir)));
  assert.equal(first.locked, true);
  await assert.rejects(lockDataDir(dir), (err: unknown) => {
    assert.ok(err instanceof DataDirLockedError, String(err));
    assert.match(err.message, /is in use/);
    assert.match(err.message, /--data-dir/);
    assert.match(err.message, new RegExp(`pid ${first.pid} on host`), 'names what the holder wrote');
    return true;
  });
  // SIGKILL: the holder runs no cleanup at all; the kernel drops its lock with its fds.
  await killAndWait(child);
  const lock = await lockDataDir(dir);
  assert.match(readFileSync(join(dir, LOCK_FILE), 'utf8'), new RegExp(`^pid ${process.pid} on host `));
  await lock.release();
  await lock.release();
});

test('a lock file holding our own pid is not taken as stale while another process holds the lock', async (t) => {
  // What the old pid-file lock wrote, with the holder's pid equal to ours: in containers both nodes
  // are PID 1. The old lockDataDir (meta.ts) saw its own pid, called the file stale and took it.
  const dir = scratch(t);
  const { child } = await spawnHolder(t, node(holderScript(dir)));
  writeFileSync(join(dir, LOCK_FILE), `${process.pid}\n`);
  await assert.rejects(lockDataDir(dir), DataDirLockedError);
  await killAndWait(child);
  await (await lockDataDir(dir)).release();
});

test('two nodes that are both PID 1 (separate PID namespaces) cannot both lock one directory', async (t) => {
  const unshare = ['unshare', '--pid', '--fork', '--kill-child'];
  try {
    await promisify(execFile)(unshare[0]!, [...unshare.slice(1), 'true']);
  } catch (err) {
    return t.skip(`cannot create PID namespaces here (${(err as Error).message.split('\n', 1)[0]})`);
  }
  const dir = scratch(t);
  const { first } = await spawnHolder(t, [...unshare, ...node(holderScript(dir))]);
  assert.equal(first.pid, 1, 'the holder is PID 1 in its namespace');
  const { stdout } = await promisify(execFile)(unshare[0]!, [...unshare.slice(1), ...node(contenderScript(dir))]);
  const result = JSON.parse(stdout) as { pid: number; error?: string; took?: boolean };
  assert.equal(result.pid, 1, 'the contender is PID 1 too');
  assert.equal(result.error, 'DataDirLockedError', JSON.stringify(result));
});

test('a second lock of the same directory in one process is refused until the first is released', async (t) => {
  const dir = scratch(t);
  const first = await lockDataDir(dir);
  await assert.rejects(lockDataDir(dir), DataDirLockedError);
  await first.release();
  await (await lockDataDir(dir)).release();
});

test('without the flock addon, locking refuses with a way out, and CELER_UNSAFE_NO_LOCK=1 starts unlocked with a warning', async (t) => {
  const dir = scratch(t);
  // Makes every .node load fail in the child, as when the addon was never built.
  const script = `
    import { createRequire } from 'node:module';
    createRequire(import.meta.url)('node:module')._extensions['.node'] = () => { throw new Error('simulated: not built'); };
    const { lockDataDir } = await import(${JSON.stringify(LOCK_TS_URL)});
    const out = {};
    try { await lockDataDir(${JSON.stringify(dir)}); out.refused = false; }
    catch (err) { out.refused = err.name; out.message = err.message; }
    process.env.CELER_UNSAFE_NO_LOCK = '1';
    const logs = [];
    const lock = await lockDataDir(${JSON.stringify(dir)}, { log: (m) => logs.push(m) });
    await lock.release();
    out.logs = logs;
    console.log(JSON.stringify(out));
  `;
  const env = { ...process.env };
  delete env['CELER_UNSAFE_NO_LOCK'];
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script], { env });
  const out = JSON.parse(stdout) as { refused: string | false; message: string; logs: string[] };
  assert.equal(out.refused, DataDirLockUnavailableError.name);
  assert.match(out.message, /simulated: not built/);
  assert.match(out.message, /hack\/build-native\.sh/);
  assert.match(out.message, /CELER_UNSAFE_NO_LOCK=1/);
  assert.equal(out.logs.length, 1);
  assert.match(out.logs[0]!, /WITHOUT a data-directory lock/);
});
