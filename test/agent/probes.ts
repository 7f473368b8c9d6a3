// Readiness, liveness and startup probing of a running container: httpGet, tcpSocket and exec
// probes against the pod's loopback IP, with success/failure thresholds. Readiness sets the
// container's ready flag (reported by pod-status.ts); a failed liveness probe kills the process
// so the supervisor restarts it. Periods and initial delays are capped at probePeriodCapMs.
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { killGroup, type AgentContext, type ContainerRun, type PodRun } from './context.ts';
import type { Probe } from './types.ts';

function probeDelay(ctx: AgentContext, ms: number | undefined, dflt: number): number {
  return Math.min(ms ?? dflt, ctx.opts.probePeriodCapMs ?? 1000);
}

/** Runs the container's startup, readiness and liveness probes until its process changes or the pod terminates. */
export function scheduleProbes(ctx: AgentContext, run: PodRun, cr: ContainerRun): void {
  const spec = cr.spec;
  const proc = cr.proc;
  const period = probeDelay(
    ctx,
    Math.min(
      (spec.readinessProbe?.periodSeconds ?? 10) * 1000,
      (spec.livenessProbe?.periodSeconds ?? 10) * 1000,
      (spec.startupProbe?.periodSeconds ?? 10) * 1000,
    ),
    10_000,
  );
  const firstDelay = probeDelay(ctx, (spec.readinessProbe?.initialDelaySeconds ?? 0) * 1000, 0);
  const round = async (): Promise<void> => {
    if (cr.proc !== proc || run.terminating) return;
    if (!cr.started && spec.startupProbe !== undefined) {
      if (await probe(ctx, run, cr, spec.startupProbe)) cr.started = true;
    }
    if (cr.started) {
      const wasReady = cr.ready;
      if (spec.readinessProbe === undefined) cr.ready = true;
      else if (await probe(ctx, run, cr, spec.readinessProbe)) {
        cr.failStreak = 0;
        if (++cr.readyStreak >= (spec.readinessProbe.successThreshold ?? 1)) cr.ready = true;
      } else {
        cr.readyStreak = 0;
        if (++cr.failStreak >= (spec.readinessProbe.failureThreshold ?? 3) || !cr.ready) cr.ready = false;
      }
      if (spec.livenessProbe !== undefined && proc !== undefined && cr.proc === proc) {
        if (await probe(ctx, run, cr, spec.livenessProbe)) cr.liveFailStreak = 0;
        else if (++cr.liveFailStreak >= (spec.livenessProbe.failureThreshold ?? 3)) {
          ctx.log(`pod ${run.namespace}/${run.name} container ${spec.name} failed its liveness probe; killing it`);
          cr.liveFailStreak = 0;
          killGroup(proc, 'SIGTERM');
        }
      }
      if (wasReady !== cr.ready) {
        ctx.log(`pod ${run.namespace}/${run.name} container ${spec.name} ${cr.ready ? 'ready' : 'not ready'}`);
        ctx.kick();
      }
    }
    if (cr.proc === proc && !run.terminating) cr.probeTimer = setTimeout(() => void round(), period);
  };
  cr.probeTimer = setTimeout(() => void round(), firstDelay);
}

/** One probe attempt (httpGet, tcpSocket or exec against the pod's IP and local process); true when it passes. */
async function probe(ctx: AgentContext, run: PodRun, cr: ContainerRun, p: Probe): Promise<boolean> {
  const timeout = Math.max(200, (p.timeoutSeconds ?? 1) * 1000);
  const portOf = (port: number | string): number => {
    if (typeof port === 'number') return port;
    if (/^\d+$/.test(port)) return Number(port);
    const found = cr.spec.ports?.find((x) => x.name === port);
    if (found === undefined) throw new Error(`probe port ${port}: no such named port`);
    return found.containerPort;
  };
  try {
    if (p.httpGet !== undefined) {
      const port = portOf(p.httpGet.port);
      const host = p.httpGet.host ?? run.podIP;
      return await new Promise<boolean>((resolve) => {
        const req = http.get({ host, port, path: p.httpGet?.path ?? '/', timeout }, (res) => {
          res.resume();
          resolve((res.statusCode ?? 0) >= 200 && (res.statusCode ?? 0) < 400);
        });
        req.on('timeout', () => req.destroy());
        req.on('error', () => resolve(false));
      });
    }
    if (p.tcpSocket !== undefined) {
      const port = portOf(p.tcpSocket.port);
      return await new Promise<boolean>((resolve) => {
        const s = net.connect({ host: p.tcpSocket?.host ?? run.podIP, port, timeout });
        s.on('connect', () => {
          s.destroy();
          resolve(true);
        });
        s.on('timeout', () => {
          s.destroy();
          resolve(false);
        });
        s.on('error', () => resolve(false));
      });
    }
    if (p.exec !== undefined) {
      const argv = p.exec.command;
      const launch = cr.launch;
      const exe = argv[0];
      if (exe === undefined) return false;
      const local = ctx.opts.executables?.[exe] ?? ctx.opts.executables?.[path.posix.basename(exe)] ?? [exe];
      return await new Promise<boolean>((resolve) => {
        const child = spawn(local[0] as string, [...local.slice(1), ...argv.slice(1)], { cwd: launch?.cwd, env: launch?.env, stdio: 'ignore', timeout });
        child.on('error', () => resolve(false));
        child.on('exit', (code) => resolve(code === 0));
      });
    }
    return true;
  } catch (err) {
    ctx.log(`probe ${run.namespace}/${run.name}: ${(err as Error).message}`);
    return false;
  }
}
