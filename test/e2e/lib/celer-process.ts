// Starts a real `celer serve --standalone` process for end-to-end tests and reads the addresses
// it prints. Always stop it (stop() or kill()) in a finally block.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
export const CELER = join(ROOT, 'bin/celer');

/** Longest a node may take to print "ready" (recovery of a large test log included). */
const START_TIMEOUT_MS = 60_000;

export interface CelerProcess {
  proc: ChildProcess;
  native: string;
  http: string;
  grpc: string | null;
  dataDir: string;
  stderr(): string;
  /** SIGTERM and wait for exit. */
  stop(): Promise<number | null>;
  /** Send a signal and wait for exit (SIGKILL: a crash). */
  kill(signal: NodeJS.Signals): Promise<number | null>;
}

export async function tempDir(prefix: string): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export async function removeDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true });
}

export function startCeler(dataDir: string, extra: string[] = []): Promise<CelerProcess> {
  const proc = spawn(CELER, ['serve', '--standalone', '--data-dir', dataDir, '--listen', '127.0.0.1:0', ...extra], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  return new Promise<CelerProcess>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`celer did not become ready in ${START_TIMEOUT_MS} ms; stdout: ${out}; stderr: ${err}`));
    }, START_TIMEOUT_MS);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`celer exited with ${code} before it was ready; stderr: ${err}`));
    });
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (!/^ready$/m.test(out)) return;
      clearTimeout(timer);
      const addr = (kind: string): string | null => new RegExp(`^listening ${kind} (\\S+)$`, 'm').exec(out)?.[1] ?? null;
      const kill = async (signal: NodeJS.Signals): Promise<number | null> => {
        if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
        return exited;
      };
      resolve({ proc, native: addr('native')!, http: addr('http')!, grpc: addr('grpc'), dataDir, stderr: () => err, stop: () => kill('SIGTERM'), kill });
    });
  });
}

/** Runs the celer CLI to completion. */
export function runCeler(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(CELER, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}
