// Shared harness of the real-Kubernetes end-to-end suites (test/e2e/kube-*.test.ts): starts the
// local control plane with hack/kube-up.sh once per suite and stops it with hack/kube-down.sh,
// runs kubectl/helm against it, and polls with bounded deadlines.
//
// Set CELER_E2E_KUBE_RUN_DIR to a directory where `hack/kube-up.sh DIR` already ran to reuse that
// control plane (it is then left running): handy when iterating on one suite. Otherwise each
// suite gets /tmp/celer-kube-e2e-<suite>-XXXXXX; after the suite only its logs remain there.
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, mkdirSync, openSync, closeSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { KubeClient, loadKubeconfig } from '../agent/kube.ts';
import { repoRoot, nodeBin } from '../agent/celer.ts';

export { repoRoot, nodeBin };

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a program to completion (bounded by timeoutMs); never throws on a non-zero exit. */
export function run(file: string, args: string[], opts: { input?: string; env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = execFile(
      file,
      args,
      { cwd: opts.cwd ?? repoRoot, env: opts.env ?? process.env, timeout: opts.timeoutMs ?? 120_000, maxBuffer: 64 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err === null ? 0 : typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1;
        resolve({ code, stdout, stderr: err !== null && code === 1 && stderr === '' ? err.message : stderr });
      },
    );
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}

/** Like run() but throws, with both streams, when the exit status is not 0. */
export async function runOk(file: string, args: string[], opts: Parameters<typeof run>[2] = {}): Promise<string> {
  const r = await run(file, args, opts);
  if (r.code !== 0) throw new Error(`${path.basename(file)} ${args.join(' ')} exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
  return r.stdout;
}

/**
 * Polls fn until it returns a value other than undefined/false, or throws after timeoutMs with
 * the description and the last value or error seen.
 */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 60_000, intervalMs = 250): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
      last = v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const detail = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${detail})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}

export interface KubeEnv {
  runDir: string;
  kubeconfig: string;
  server: string;
  client: KubeClient;
  /** kubectl (the preinstalled 1.32) against this control plane; never throws. */
  kubectl(args: string[], input?: string): Promise<RunResult>;
  /** kubectl that throws on failure and returns stdout. */
  kubectlOk(args: string[], input?: string): Promise<string>;
  /** Tails of the control-plane logs, for failure messages. */
  logs(lines?: number): string;
  stop(): Promise<void>;
}

function tail(file: string, lines: number): string {
  if (!existsSync(file)) return '';
  const all = readFileSync(file, 'utf8').split('\n');
  return all.slice(-lines).join('\n');
}

/** Starts etcd + kube-apiserver + kube-controller-manager (hack/kube-up.sh) in a fresh run dir. */
export async function startKube(suite: string): Promise<KubeEnv> {
  const reuse = process.env.CELER_E2E_KUBE_RUN_DIR;
  let runDir: string;
  if (reuse !== undefined && reuse !== '') {
    runDir = path.resolve(reuse);
  } else {
    runDir = mkdtempSync(path.join(os.tmpdir(), `celer-kube-e2e-${suite}-`));
    // Cold, this includes building kube-apiserver (hack/kube-build.sh, 5+ minutes), so its
    // progress goes straight to stderr rather than into a buffer.
    const dir = runDir;
    await new Promise<void>((resolve, reject) => {
      const child = spawn('bash', [path.join(repoRoot, 'hack', 'kube-up.sh'), dir], { cwd: repoRoot, stdio: ['ignore', 'ignore', 'inherit'] });
      const timer = setTimeout(() => child.kill('SIGTERM'), 45 * 60_000);
      child.on('error', reject);
      child.on('exit', (code, signal) => {
        clearTimeout(timer);
        if (code === 0) resolve();
        else reject(new Error(`hack/kube-up.sh ${dir} failed (${code ?? signal}); its output is above`));
      });
    });
  }
  // Interrupted (Ctrl-C, a CI timeout): stop the control plane before exiting; the 'exit'
  // handlers of the agent and of background() then kill the processes they started.
  const onSignal = (signal: NodeJS.Signals): void => {
    if (reuse === undefined || reuse === '') {
      try {
        execFileSync('bash', [path.join(repoRoot, 'hack', 'kube-down.sh'), runDir], { stdio: 'ignore', timeout: 30_000 });
      } catch {
        // best effort while exiting
      }
    }
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const kubeconfig = path.join(runDir, 'kubeconfig');
  const conn = loadKubeconfig(kubeconfig);
  const client = new KubeClient(conn);
  const env = { ...process.env, KUBECONFIG: kubeconfig };
  const kubectl = (args: string[], input?: string): Promise<RunResult> =>
    run('kubectl', ['--kubeconfig', kubeconfig, ...args], { ...(input !== undefined ? { input } : {}), env, timeoutMs: 120_000 });
  return {
    runDir,
    kubeconfig,
    server: conn.server.toString(),
    client,
    kubectl,
    async kubectlOk(args, input) {
      const r = await kubectl(args, input);
      if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
      return r.stdout;
    },
    logs(lines = 30) {
      return ['apiserver', 'kcm', 'etcd'].map((f) => `--- ${f}.log\n${tail(path.join(runDir, `${f}.log`), lines)}`).join('\n');
    },
    async stop() {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      client.close();
      if (reuse !== undefined && reuse !== '') return;
      // Logs stay in runDir (a few hundred KB); the bulk (etcd, node data, TSDB) is removed.
      await run('bash', [path.join(repoRoot, 'hack', 'kube-down.sh'), runDir, '--clean'], { timeoutMs: 60_000 });
      for (const bulk of ['agent/volumes', 'agent/pods', 'prometheus/data']) rmSync(path.join(runDir, bulk), { recursive: true, force: true });
    },
  };
}

let helmCached: string | undefined;
/** Path of the helm binary (hack/helm.sh; fetched once into ~/.cache/celer/helm). */
export async function helmPath(): Promise<string> {
  helmCached ??= (await runOk('bash', [path.join(repoRoot, 'hack', 'helm.sh')], { timeoutMs: 10 * 60_000 })).trim().split('\n').pop() ?? '';
  return helmCached;
}

/** Path of the prometheus binary (hack/prometheus.sh; apt-get install on first use). */
export async function prometheusPath(): Promise<string> {
  return (await runOk('bash', [path.join(repoRoot, 'hack', 'prometheus.sh')], { timeoutMs: 10 * 60_000 })).trim().split('\n').pop() ?? '';
}

export interface Background {
  proc: ChildProcess;
  logFile: string;
  /** The last lines of its output. */
  output(lines?: number): string;
  /** SIGTERM, then SIGKILL after graceMs; resolves once it has exited. */
  stop(graceMs?: number): Promise<void>;
}

/** Starts a long-running process with its output in logFile (never a pipe that could fill up). */
export function background(file: string, args: string[], logFile: string, opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Background {
  mkdirSync(path.dirname(logFile), { recursive: true });
  const fd = openSync(logFile, 'a');
  const proc = spawn(file, args, { cwd: opts.cwd ?? repoRoot, env: opts.env ?? process.env, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  const exited = new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) resolve();
    proc.on('exit', () => resolve());
    proc.on('error', () => resolve());
  });
  const killOnExit = (): void => {
    proc.kill('SIGKILL');
  };
  process.on('exit', killOnExit);
  return {
    proc,
    logFile,
    output: (lines = 40) => tail(logFile, lines),
    async stop(graceMs = 10_000) {
      process.off('exit', killOnExit);
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(t);
    },
  };
}

/** A fresh namespace (unique name per run). */
export async function createNamespace(env: KubeEnv, prefix: string): Promise<string> {
  const name = `${prefix}-${Math.random().toString(36).slice(2, 7)}`;
  await env.client.create('/api/v1/namespaces', { apiVersion: 'v1', kind: 'Namespace', metadata: { name } });
  return name;
}

/** A TCP port free on 127.0.0.1 right now, in 20000-32000 (below the ephemeral range). */
export async function freePort(): Promise<number> {
  const net = await import('node:net');
  for (let i = 0; i < 100; i++) {
    const port = 20000 + Math.floor(Math.random() * 12000);
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    });
    if (ok) return port;
  }
  throw new Error('no free port found in 100 tries');
}
