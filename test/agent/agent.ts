// The test agent: plays scheduler, kubelet and volume provisioner for a local control plane that
// has neither (hack/kube-up.sh). It
//   - registers virtual Nodes (each with its own loopback host IP),
//   - provisions and binds PersistentVolumes for pending PVCs (a directory per claim, which
//     survives pod restarts like a local PV) and binds unscheduled pods to a node
//     (test/agent/placement.ts, test/agent/schedule.ts),
//   - runs each container of a bound pod as a local process (test/agent/supervisor.ts,
//     test/agent/launch.ts, test/agent/podspec.ts), with its own loopback podIP so the pod's
//     declared ports work unchanged, and restarts crashed containers per restartPolicy,
//   - reports pod status (phase, IPs, container states, restart counts, Ready from the readiness
//     probe; test/agent/pod-status.ts, test/agent/probes.ts), and
//   - terminates processes (SIGTERM, grace, SIGKILL) when pods are deleted, then removes the pod.
// This file is the TestAgent class: it owns the watches, the virtual nodes, pod IPs and the
// record of running pods, and wires the parts above together in one reconcile loop.
//
// Time is compressed where Kubernetes' defaults would make tests slow: probe periods and initial
// delays are capped (probePeriodCapMs) and crash-loop back-off starts at 0.5 s (max 10 s).
import { mkdirSync, readFileSync, readdirSync, existsSync } from 'node:fs';
import path from 'node:path';
import { AGENT_LABEL, killGroup, newContainerRun, now, type AgentContext, type AgentOptions, type PodRun } from './context.ts';
import { Informer } from './informer.ts';
import { KubeClient, KubeError, loadKubeconfig, resourcePath } from './kube.ts';
import { Placement, volumeDir } from './placement.ts';
import { deletePod, reportStatus } from './pod-status.ts';
import type { VirtualNode } from './schedule.ts';
import { startPod, terminate } from './supervisor.ts';
import { PodNetwork } from './netns.ts';
import type { PersistentVolumeClaim, Pod } from './types.ts';

export type { AgentOptions } from './context.ts';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class TestAgent {
  readonly client: KubeClient;
  readonly workDir: string;
  readonly nodes: (VirtualNode & { ip: string })[];
  /** The agent's own log, newest last (bounded). */
  readonly events: string[] = [];
  /** The pod network of podNetwork 'netns' (its hostAddress is how pods reach the host). */
  readonly network: PodNetwork | undefined;
  private readonly opts: AgentOptions;
  private readonly ctx: AgentContext;
  private readonly placement: Placement;
  private readonly pods: Informer<Pod>[] = [];
  private readonly pvcs: Informer<PersistentVolumeClaim>[] = [];
  private readonly runs = new Map<string, PodRun>();
  private readonly usedIPs = new Set<string>();
  private readonly ipBase: number;
  private nextIP = 0;
  private dirty = false;
  private running: Promise<void> | undefined;
  private tick: NodeJS.Timeout | undefined;
  private stopped = false;
  private readonly onExit = (): void => this.killAllNow();

  private constructor(opts: AgentOptions) {
    this.opts = opts;
    this.workDir = path.resolve(opts.workDir);
    this.client = new KubeClient(loadKubeconfig(opts.kubeconfig));
    // One random 127.X.0.0/16 per agent, so two agents on one machine do not share addresses.
    this.ipBase = 64 + Math.floor(Math.random() * 190);
    const nodes: { name: string; labels?: Record<string, string> }[] = opts.nodes ?? [0, 1, 2].map((i) => ({ name: `agent-node-${i}` }));
    this.nodes = nodes.map((n, i) => ({
      name: n.name,
      ip: `127.${this.ipBase}.0.${i + 1}`,
      labels: { 'kubernetes.io/hostname': n.name, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64', [AGENT_LABEL]: 'true', ...n.labels },
    }));
    this.network = opts.podNetwork === 'netns' ? new PodNetwork() : undefined;
    this.ctx = { client: this.client, opts, workDir: this.workDir, log: (l) => this.log(l), kick: () => this.kick() };
    this.placement = new Placement(this.ctx, this.nodes, () => this.allClaims());
  }

  /** Registers the nodes, starts the caches and the control loop. */
  static async start(opts: AgentOptions): Promise<TestAgent> {
    const agent = new TestAgent(opts);
    mkdirSync(agent.workDir, { recursive: true });
    process.on('exit', agent.onExit);
    agent.network?.start();
    await agent.registerNodes();
    const kick = (): void => agent.kick();
    const log = (m: string): void => agent.log(m);
    const namespaces = opts.namespaces ?? [undefined];
    for (const ns of namespaces) {
      agent.pods.push(new Informer<Pod>(agent.client, resourcePath('v1', 'pods', ns), kick, log));
      agent.pvcs.push(new Informer<PersistentVolumeClaim>(agent.client, resourcePath('v1', 'persistentvolumeclaims', ns), kick, log));
    }
    await Promise.all([...agent.pods, ...agent.pvcs].map((i) => i.start()));
    agent.tick = setInterval(kick, 1000);
    agent.kick();
    agent.log(`started: nodes ${agent.nodes.map((n) => `${n.name}=${n.ip}`).join(', ')}; namespaces ${opts.namespaces?.join(',') ?? '*'}`);
    return agent;
  }

  /** Kills every process (SIGTERM, then SIGKILL after 5 s), stops watching, deletes the Nodes. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.tick !== undefined) clearInterval(this.tick);
    await Promise.all([...this.pods, ...this.pvcs].map((i) => i.stop()));
    await this.running;
    await Promise.all([...this.runs.values()].map((r) => this.terminate(r, 5000)));
    this.network?.stop();
    for (const n of this.nodes) {
      await this.client.delete(resourcePath('v1', 'nodes', undefined, n.name)).catch(() => undefined);
    }
    this.client.close();
    process.off('exit', this.onExit);
  }

  /** Everything pod `name` (every pod of the namespace for '') printed, per container, for failure output. */
  podLogs(namespace: string, name: string, maxBytes = 8000): string {
    const out: string[] = [];
    const root = path.join(this.workDir, 'logs');
    if (!existsSync(root)) return '';
    for (const d of readdirSync(root).filter((d) => d.startsWith(name === '' ? `${namespace}_` : `${namespace}_${name}_`))) {
      for (const f of readdirSync(path.join(root, d))) {
        const text = readFileSync(path.join(root, d, f), 'utf8');
        out.push(`--- ${d}/${f}\n${text.length > maxBytes ? `...${text.slice(-maxBytes)}` : text}`);
      }
    }
    return out.join('\n');
  }

  /** The local directory backing PVC `claim` (exists once provisioned). */
  volumeDir(namespace: string, claim: string): string {
    return volumeDir(this.workDir, namespace, claim);
  }

  /** Pid of the running process of a pod's container, if any (tests kill it to simulate a crash). */
  pid(namespace: string, name: string, container?: string): number | undefined {
    for (const r of this.runs.values()) {
      if (r.namespace !== namespace || r.name !== name || r.terminating) continue;
      const c = container === undefined ? r.containers[0] : r.containers.find((x) => x.spec.name === container);
      return c?.proc?.pid;
    }
    return undefined;
  }

  private log(line: string): void {
    const l = `${new Date().toISOString().slice(11, 23)} ${line}`;
    this.events.push(l);
    if (this.events.length > 1000) this.events.splice(0, this.events.length - 1000);
    this.opts.log?.(l);
  }

  private kick(): void {
    if (this.stopped) return;
    this.dirty = true;
    if (this.running !== undefined) return;
    this.running = (async () => {
      while (this.dirty && !this.stopped) {
        this.dirty = false;
        try {
          await this.reconcile();
        } catch (err) {
          this.log(`reconcile: ${(err as Error).stack ?? String(err)}`);
          await sleep(200);
        }
      }
      this.running = undefined;
    })();
  }

  private async registerNodes(): Promise<void> {
    for (const n of this.nodes) {
      const p = resourcePath('v1', 'nodes', undefined, n.name);
      try {
        await this.client.create(resourcePath('v1', 'nodes'), { apiVersion: 'v1', kind: 'Node', metadata: { name: n.name, labels: n.labels } });
      } catch (err) {
        if (!(err instanceof KubeError && err.status === 409)) throw err;
        await this.client.patch(p, { metadata: { labels: n.labels } });
      }
      const t = now();
      await this.client.patch(`${p}/status`, {
        status: {
          conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'celer test agent', lastHeartbeatTime: t, lastTransitionTime: t }],
          addresses: [
            { type: 'InternalIP', address: n.ip },
            { type: 'Hostname', address: n.name },
          ],
          capacity: { cpu: '2', memory: '8Gi', pods: '110', 'ephemeral-storage': '100Gi' },
          allocatable: { cpu: '2', memory: '8Gi', pods: '110', 'ephemeral-storage': '100Gi' },
          nodeInfo: {
            kubeletVersion: 'v1.20.2',
            kubeProxyVersion: 'v1.20.2',
            operatingSystem: 'linux',
            architecture: 'amd64',
            containerRuntimeVersion: 'celer-test-agent://1',
            osImage: 'celer test agent',
            kernelVersion: '',
            machineID: '',
            systemUUID: '',
            bootID: '',
          },
        },
      });
    }
  }

  private allPods(): Pod[] {
    return this.pods.flatMap((i) => [...i.store.values()]);
  }

  private allClaims(): PersistentVolumeClaim[] {
    return this.pvcs.flatMap((i) => [...i.store.values()]);
  }

  private isOurs(node: string | undefined): boolean {
    return node !== undefined && this.nodes.some((n) => n.name === node);
  }

  private async reconcile(): Promise<void> {
    await this.placement.reconcileClaims();

    const pods = this.allPods();
    await this.placement.bindPending(pods);

    const live = new Set<string>();
    for (const pod of pods) {
      if (!this.isOurs(pod.spec.nodeName)) continue;
      const uid = pod.metadata.uid ?? '';
      live.add(uid);
      this.network?.publish(pod.metadata.namespace ?? 'default', pod.metadata.name, pod.spec.hostname, pod.spec.subdomain);
      let run = this.runs.get(uid);
      if (pod.metadata.deletionTimestamp !== undefined) {
        if (run === undefined) await deletePod(this.ctx, pod);
        else if (!run.terminating) {
          const grace = Math.min((pod.spec.terminationGracePeriodSeconds ?? 30) * 1000, this.opts.gracePeriodCapMs ?? 20_000);
          this.log(`pod ${Informer.key(pod)} deleted: terminating (grace ${grace} ms)`);
          void this.terminate(run, grace).then(() => deletePod(this.ctx, pod));
        }
        continue;
      }
      if (run === undefined) {
        run = this.createRun(pod);
        this.runs.set(uid, run);
        void startPod(this.ctx, run);
      }
      run.pod = pod;
      if (!run.terminating) await reportStatus(this.ctx, run);
    }
    for (const run of this.runs.values()) {
      if (!live.has(run.uid) && !run.terminating) {
        this.log(`pod ${run.namespace}/${run.name} (${run.uid}) is gone: killing its processes`);
        void this.terminate(run, 2000);
      }
    }
  }

  private allocateIP(): string {
    for (;;) {
      const n = this.nextIP++;
      const ip = `127.${this.ipBase}.${1 + Math.floor(n / 250) % 250}.${2 + (n % 250)}`;
      if (!this.usedIPs.has(ip)) {
        this.usedIPs.add(ip);
        return ip;
      }
    }
  }

  private createRun(pod: Pod): PodRun {
    const ns = pod.metadata.namespace ?? 'default';
    const uid = pod.metadata.uid ?? '';
    const node = this.nodes.find((n) => n.name === pod.spec.nodeName);
    const run: PodRun = {
      uid,
      namespace: ns,
      name: pod.metadata.name,
      node: pod.spec.nodeName ?? '',
      podIP: this.network?.podIP(ns, pod.metadata.name) ?? this.allocateIP(),
      ...(this.network !== undefined ? { netns: this.network.attach(ns, pod.metadata.name, uid) } : {}),
      hostIP: node?.ip ?? '127.0.0.1',
      dir: path.join(this.workDir, 'pods', `${ns}_${pod.metadata.name}_${uid}`),
      logDir: path.join(this.workDir, 'logs', `${ns}_${pod.metadata.name}_${uid}`),
      pod,
      startTime: now(),
      containers: pod.spec.containers.map((c) => newContainerRun(c)),
      initialized: (pod.spec.initContainers ?? []).length === 0,
      startError: undefined,
      terminating: false,
      deleteSent: false,
      conditionTimes: new Map(),
      lastPatched: '',
    };
    mkdirSync(run.dir, { recursive: true });
    mkdirSync(run.logDir, { recursive: true });
    return run;
  }

  /** Terminates the pod's processes (supervisor.ts), then frees its record and podIP. */
  private async terminate(run: PodRun, graceMs: number): Promise<void> {
    await terminate(this.ctx, run, graceMs, (r) => {
      this.runs.delete(r.uid);
      this.usedIPs.delete(r.podIP);
      this.network?.detach(r.namespace, r.name, r.uid);
    });
  }

  /** Synchronous last resort on process exit: no child outlives the test process. */
  private killAllNow(): void {
    for (const run of this.runs.values()) {
      for (const cr of run.containers) {
        const proc = cr.proc;
        if (proc !== undefined) killGroup(proc, 'SIGKILL');
      }
    }
    this.network?.stop();
  }
}
