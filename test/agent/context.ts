// What the test agent's parts share: the agent's options, the context each part is handed (API
// client, options, work directory, log and the reconcile trigger), the in-memory record of a pod
// the agent runs (PodRun, one ContainerRun per container), and small process helpers.
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import type { KubeClient } from './kube.ts';
import type { ImageEntrypoint, LaunchSpec } from './podspec.ts';
import type { Container, ContainerState, Pod } from './types.ts';

export interface AgentOptions {
  kubeconfig: string;
  /** Pod directories, container logs and PV directories live here. */
  workDir: string;
  /** Virtual nodes; default three, agent-node-0..2. */
  nodes?: { name: string; labels?: Record<string, string> }[];
  /** Namespaces to serve; default every namespace. */
  namespaces?: string[];
  /** Executable basename or image path -> local argv prefix (e.g. celer -> [bin/celer]). */
  executables?: Record<string, string[]>;
  /** Image entrypoint when a container has no command. */
  entrypoint?: (image: string) => ImageEntrypoint | undefined;
  /** Extra image paths -> local directories (applied like volume mounts). */
  pathMap?: Record<string, string>;
  /** Upper bound for probe periods and initial delays, ms (default 1000). */
  probePeriodCapMs?: number;
  /** Upper bound for termination grace, ms (default 20000). */
  gracePeriodCapMs?: number;
  /**
   * Give each pod its ServiceAccount's credentials (token files and KUBECONFIG), as a kubelet's
   * token mount would (default true; a pod's automountServiceAccountToken: false also opts out).
   */
  serviceAccountCredentials?: boolean;
  /**
   * 'loopback' (default): each pod gets a 127.X.Y.Z address. 'netns': each pod runs in its own
   * network namespace with a non-loopback address on a bridge, and /etc/hosts names the pods
   * like cluster DNS would (test/agent/netns.ts; needs root and iproute2).
   */
  podNetwork?: 'loopback' | 'netns';
  /** Receives every log line of the agent (also kept in agent.events). */
  log?: (line: string) => void;
}

/** What the agent hands its parts. */
export interface AgentContext {
  readonly client: KubeClient;
  readonly opts: AgentOptions;
  /** Absolute work directory. */
  readonly workDir: string;
  /** Appends a line to the agent's log. */
  log(line: string): void;
  /** Asks for another reconcile pass (pod status is reported there). */
  kick(): void;
}

export interface ContainerRun {
  spec: Container;
  logPath: string;
  proc: ChildProcess | undefined;
  launch: LaunchSpec | undefined;
  restartCount: number;
  state: ContainerState;
  lastState: ContainerState;
  ready: boolean;
  started: boolean;
  readyStreak: number;
  failStreak: number;
  liveFailStreak: number;
  probeTimer: NodeJS.Timeout | undefined;
  restartTimer: NodeJS.Timeout | undefined;
  exited: Promise<void>;
}

export interface PodRun {
  uid: string;
  namespace: string;
  name: string;
  node: string;
  podIP: string;
  hostIP: string;
  /** The pod's network namespace (podNetwork 'netns'); containers run under `ip netns exec`. */
  netns?: string;
  dir: string;
  logDir: string;
  pod: Pod;
  startTime: string;
  containers: ContainerRun[];
  initialized: boolean;
  startError: string | undefined;
  terminating: boolean;
  deleteSent: boolean;
  conditionTimes: Map<string, { status: string; time: string }>;
  lastPatched: string;
}

export const AGENT_LABEL = 'celer.io/test-agent';
export const now = (): string => new Date().toISOString().replace(/\.\d+Z$/, 'Z');

export function newContainerRun(c: Container): ContainerRun {
  return {
    spec: c,
    logPath: '',
    proc: undefined,
    launch: undefined,
    restartCount: 0,
    state: { waiting: { reason: 'ContainerCreating' } },
    lastState: {},
    ready: false,
    started: false,
    readyStreak: 0,
    failStreak: 0,
    liveFailStreak: 0,
    probeTimer: undefined,
    restartTimer: undefined,
    exited: Promise.resolve(),
  };
}

/** Signals a container's process group (it is spawned detached), or the process alone. */
export function killGroup(proc: ChildProcess, signal: NodeJS.Signals): void {
  if (proc.pid === undefined) return;
  try {
    process.kill(-proc.pid, signal);
  } catch {
    try {
      proc.kill(signal);
    } catch {
      // already gone
    }
  }
}

export function appendLog(file: string, text: string): void {
  if (file === '') return;
  try {
    const fd = openSync(file, 'a');
    writeFileSync(fd, text);
    closeSync(fd);
  } catch {
    // the pod directory may already be gone
  }
}
