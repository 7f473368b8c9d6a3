// Pod process supervision: runs a pod's init containers, then each container as a local process
// group (stdout and stderr appended to its log file), records exits as terminated states,
// restarts crashed containers per restartPolicy with crash-loop back-off (0.5 s doubling to 10 s),
// and terminates a pod's processes (SIGTERM, grace, SIGKILL).
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { appendLog, killGroup, newContainerRun, now, type AgentContext, type ContainerRun, type PodRun } from './context.ts';
import { launchSpec } from './launch.ts';
import type { LaunchSpec } from './podspec.ts';
import { scheduleProbes } from './probes.ts';
import type { ContainerState } from './types.ts';

/** Runs the pod's init containers to completion, then starts its containers; retries after 2 s on a start error. */
export async function startPod(ctx: AgentContext, run: PodRun): Promise<void> {
  try {
    for (const ic of run.pod.spec.initContainers ?? []) {
      const cr = newContainerRun(ic);
      const code = await runToCompletion(ctx, run, cr);
      if (run.terminating) return;
      if (code !== 0) throw new Error(`init container ${ic.name} exited with ${code}`);
    }
    run.initialized = true;
    for (const cr of run.containers) await startContainer(ctx, run, cr);
  } catch (err) {
    run.startError = (err as Error).message;
    ctx.log(`pod ${run.namespace}/${run.name}: ${run.startError}`);
    for (const cr of run.containers) cr.state = { waiting: { reason: 'CreateContainerConfigError', message: run.startError } };
    if (!run.terminating) setTimeout(() => {
      if (run.terminating) return;
      run.startError = undefined;
      void startPod(ctx, run);
    }, 2000).unref();
  }
  ctx.kick();
}

function spawnProcess(run: PodRun, cr: ContainerRun, launch: LaunchSpec): ChildProcess {
  cr.logPath = path.join(run.logDir, `${cr.spec.name}.log`);
  mkdirSync(launch.cwd, { recursive: true });
  const fd = openSync(cr.logPath, 'a');
  writeFileSync(fd, `### ${now()} start: ${launch.argv.join(' ')}\n`);
  try {
    // `ip netns exec` enters the namespace and execs the command: the pid and group stay the same.
    const argv = run.netns === undefined ? launch.argv : ['ip', 'netns', 'exec', run.netns, ...launch.argv];
    return spawn(argv[0] as string, argv.slice(1), { cwd: launch.cwd, env: launch.env, stdio: ['ignore', fd, fd], detached: true });
  } finally {
    closeSync(fd);
  }
}

async function runToCompletion(ctx: AgentContext, run: PodRun, cr: ContainerRun): Promise<number> {
  const launch = await launchSpec(ctx, run, cr.spec);
  const proc = spawnProcess(run, cr, launch);
  cr.proc = proc;
  return new Promise<number>((resolve) => {
    proc.on('error', () => resolve(127));
    proc.on('exit', (code) => resolve(code ?? 137));
  });
}

async function startContainer(ctx: AgentContext, run: PodRun, cr: ContainerRun): Promise<void> {
  if (run.terminating) return;
  cr.launch = await launchSpec(ctx, run, cr.spec);
  const proc = spawnProcess(run, cr, cr.launch);
  cr.proc = proc;
  cr.ready = false;
  cr.readyStreak = 0;
  cr.failStreak = 0;
  cr.liveFailStreak = 0;
  const startedAt = now();
  cr.state = { running: { startedAt } };
  cr.started = cr.spec.startupProbe === undefined;
  ctx.log(`pod ${run.namespace}/${run.name} container ${cr.spec.name} started pid ${proc.pid ?? '?'} on ${run.podIP}: ${cr.launch.argv.join(' ')}`);
  cr.exited = new Promise<void>((resolve) => {
    let done = false;
    const onEnd = (code: number | null, signal: NodeJS.Signals | null, message?: string): void => {
      if (done) return;
      done = true;
      if (cr.proc === proc) cr.proc = undefined;
      onContainerExit(ctx, run, cr, startedAt, code, signal, message);
      resolve();
    };
    proc.on('error', (err) => onEnd(127, null, err.message));
    proc.on('exit', (code, signal) => onEnd(code, signal));
  });
  scheduleProbes(ctx, run, cr);
  ctx.kick();
}

/** Like the kubelet's FallbackToLogsOnError: at most the last 80 lines and 2048 bytes of the container's output. */
export const FALLBACK_LOG_LINES = 80;
export const FALLBACK_LOG_BYTES = 2048;

/** The tail of a container log as a termination message (the agent's own `###` lines left out). */
export function logTailMessage(logPath: string): string | undefined {
  if (logPath === '' || !existsSync(logPath)) return undefined;
  const lines = readFileSync(logPath, 'utf8').split('\n').filter((l) => l !== '' && !l.startsWith('### '));
  let text = lines.slice(-FALLBACK_LOG_LINES).join('\n');
  if (Buffer.byteLength(text) > FALLBACK_LOG_BYTES) text = Buffer.from(text).subarray(-FALLBACK_LOG_BYTES).toString('utf8');
  return text === '' ? undefined : text;
}

function onContainerExit(ctx: AgentContext, run: PodRun, cr: ContainerRun, startedAt: string, code: number | null, signal: NodeJS.Signals | null, message?: string): void {
  if (cr.probeTimer !== undefined) clearTimeout(cr.probeTimer);
  cr.probeTimer = undefined;
  cr.ready = false;
  const exitCode = code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 1);
  if (message === undefined && exitCode !== 0 && cr.spec.terminationMessagePolicy === 'FallbackToLogsOnError') message = logTailMessage(cr.logPath);
  const terminated: ContainerState = {
    terminated: {
      exitCode,
      reason: exitCode === 0 ? 'Completed' : 'Error',
      ...(message !== undefined ? { message } : {}),
      startedAt,
      finishedAt: now(),
    },
  };
  appendLog(cr.logPath, `### ${now()} exited: code ${code} signal ${signal}${message !== undefined ? ` (${message})` : ''}\n`);
  ctx.log(`pod ${run.namespace}/${run.name} container ${cr.spec.name} exited (code ${code}, signal ${signal})${message !== undefined ? `: ${message}` : ''}`);
  cr.state = terminated;
  if (run.terminating) {
    ctx.kick();
    return;
  }
  const policy = run.pod.spec.restartPolicy ?? 'Always';
  if (policy === 'Always' || (policy === 'OnFailure' && exitCode !== 0)) {
    cr.lastState = terminated;
    const delay = Math.min(500 * 2 ** cr.restartCount, 10_000);
    cr.state = { waiting: { reason: 'CrashLoopBackOff', message: `back-off ${delay} ms restarting failed container ${cr.spec.name}` } };
    cr.restartTimer = setTimeout(() => {
      cr.restartTimer = undefined;
      if (run.terminating) return;
      cr.restartCount++;
      startContainer(ctx, run, cr).catch((err: Error) => {
        cr.state = { waiting: { reason: 'CreateContainerConfigError', message: err.message } };
        ctx.kick();
      });
    }, delay);
  }
  ctx.kick();
}

/** SIGTERM every process of the pod, SIGKILL after graceMs; resolves when all have exited. */
export async function terminate(ctx: AgentContext, run: PodRun, graceMs: number, onGone: (run: PodRun) => void): Promise<void> {
  if (run.terminating) {
    await Promise.all(run.containers.map((c) => c.exited));
    return;
  }
  run.terminating = true;
  for (const cr of run.containers) {
    if (cr.probeTimer !== undefined) clearTimeout(cr.probeTimer);
    if (cr.restartTimer !== undefined) clearTimeout(cr.restartTimer);
    cr.ready = false;
    if (cr.proc !== undefined) killGroup(cr.proc, 'SIGTERM');
  }
  const exited = Promise.all(run.containers.map((c) => c.exited));
  let timer: NodeJS.Timeout | undefined;
  const timedOut = await Promise.race([
    exited.then(() => false),
    new Promise<boolean>((r) => {
      timer = setTimeout(() => r(true), graceMs);
    }),
  ]);
  if (timer !== undefined) clearTimeout(timer);
  if (timedOut) {
    ctx.log(`pod ${run.namespace}/${run.name}: grace period over, SIGKILL`);
    for (const cr of run.containers) if (cr.proc !== undefined) killGroup(cr.proc, 'SIGKILL');
    await exited;
  }
  onGone(run);
  rmSync(run.dir, { recursive: true, force: true });
}
