// The test agent: plays scheduler, kubelet and volume provisioner for a local control plane that
// has neither (hack/kube-up.sh). It
//   - registers virtual Nodes (each with its own loopback host IP),
//   - provisions and binds PersistentVolumes for pending PVCs (a directory per claim, which
//     survives pod restarts like a local PV),
//   - binds unscheduled pods to a node (test/agent/schedule.ts),
//   - runs each container of a bound pod as a local process (test/agent/podspec.ts), with its
//     own loopback podIP so the pod's declared ports work unchanged,
//   - reports pod status (phase, IPs, container states, restart counts, Ready from the readiness
//     probe), restarts crashed containers per restartPolicy, and
//   - terminates processes (SIGTERM, grace, SIGKILL) when pods are deleted, then removes the pod.
//
// Time is compressed where Kubernetes' defaults would make tests slow: probe periods and initial
// delays are capped (probePeriodCapMs) and crash-loop back-off starts at 0.5 s (max 10 s).
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readdirSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Informer } from './informer.ts';
import { KubeClient, KubeError, loadKubeconfig, resourcePath } from './kube.ts';
import { translateContainer, type ImageEntrypoint, type LaunchSpec } from './podspec.ts';
import { schedule, type VirtualNode } from './schedule.ts';
import type {
  ConfigMapOrSecret,
  Container,
  ContainerState,
  ContainerStatus,
  PersistentVolumeClaim,
  Pod,
  PodCondition,
  PodStatus,
  Probe,
} from './types.ts';

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
  /** Receives every log line of the agent (also kept in agent.events). */
  log?: (line: string) => void;
}

interface ContainerRun {
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

interface PodRun {
  uid: string;
  namespace: string;
  name: string;
  node: string;
  podIP: string;
  hostIP: string;
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

const AGENT_LABEL = 'celer.io/test-agent';
const now = (): string => new Date().toISOString().replace(/\.\d+Z$/, 'Z');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class TestAgent {
  readonly client: KubeClient;
  readonly workDir: string;
  readonly nodes: (VirtualNode & { ip: string })[];
  /** The agent's own log, newest last (bounded). */
  readonly events: string[] = [];
  private readonly opts: AgentOptions;
  private readonly pods: Informer<Pod>[] = [];
  private readonly pvcs: Informer<PersistentVolumeClaim>[] = [];
  private readonly runs = new Map<string, PodRun>();
  private readonly boundUids = new Set<string>();
  private readonly unschedulableMsg = new Map<string, string>();
  private readonly provisioned = new Map<string, { pv: string; dir: string }>();
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
  }

  /** Registers the nodes, starts the caches and the control loop. */
  static async start(opts: AgentOptions): Promise<TestAgent> {
    const agent = new TestAgent(opts);
    mkdirSync(agent.workDir, { recursive: true });
    process.on('exit', agent.onExit);
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
    return path.join(this.workDir, 'volumes', namespace, claim);
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
    const claims = this.allClaims();
    for (const pvc of claims) {
      if (pvc.metadata.deletionTimestamp === undefined && pvc.status?.phase !== 'Bound' && !this.provisioned.has(pvc.metadata.uid ?? '')) {
        await this.provision(pvc).catch((err: Error) => this.log(`provision ${Informer.key(pvc)}: ${err.message}`));
      }
    }
    const claimUids = new Set(claims.map((c) => c.metadata.uid));
    for (const [uid, pv] of this.provisioned) {
      if (claimUids.has(uid)) continue;
      this.provisioned.delete(uid);
      this.log(`claim ${uid} gone: deleting ${pv.pv} and ${pv.dir}`);
      // The PV protection finalizer holds a PV while its phase is Bound; the PV binder that would
      // mark it Released is not running (the agent binds instead), so the agent does it.
      const pvPath = resourcePath('v1', 'persistentvolumes', undefined, pv.pv);
      await this.client.patch(`${pvPath}/status`, { status: { phase: 'Released' } }).catch(() => undefined);
      await this.client.delete(pvPath).catch(() => undefined);
      rmSync(pv.dir, { recursive: true, force: true });
    }

    const pods = this.allPods();
    for (const pod of pods) {
      if (pod.spec.nodeName !== undefined || pod.metadata.deletionTimestamp !== undefined || this.boundUids.has(pod.metadata.uid ?? '')) continue;
      await this.bind(pod, pods).catch((err: Error) => this.log(`bind ${Informer.key(pod)}: ${err.message}`));
    }

    const live = new Set<string>();
    for (const pod of pods) {
      if (!this.isOurs(pod.spec.nodeName)) continue;
      const uid = pod.metadata.uid ?? '';
      live.add(uid);
      let run = this.runs.get(uid);
      if (pod.metadata.deletionTimestamp !== undefined) {
        if (run === undefined) await this.deletePod(pod);
        else if (!run.terminating) {
          const grace = Math.min((pod.spec.terminationGracePeriodSeconds ?? 30) * 1000, this.opts.gracePeriodCapMs ?? 20_000);
          this.log(`pod ${Informer.key(pod)} deleted: terminating (grace ${grace} ms)`);
          void this.terminate(run, grace).then(() => this.deletePod(pod));
        }
        continue;
      }
      if (run === undefined) {
        run = this.createRun(pod);
        this.runs.set(uid, run);
        void this.startPod(run);
      }
      run.pod = pod;
      if (!run.terminating) await this.reportStatus(run);
    }
    for (const run of this.runs.values()) {
      if (!live.has(run.uid) && !run.terminating) {
        this.log(`pod ${run.namespace}/${run.name} (${run.uid}) is gone: killing its processes`);
        void this.terminate(run, 2000);
      }
    }
  }

  private async provision(pvc: PersistentVolumeClaim): Promise<void> {
    const ns = pvc.metadata.namespace ?? 'default';
    const uid = pvc.metadata.uid ?? '';
    const dir = this.volumeDir(ns, pvc.metadata.name);
    mkdirSync(dir, { recursive: true });
    const pvName = `pvc-${uid}`;
    const storage = pvc.spec.resources?.requests?.storage ?? '1Gi';
    const accessModes = pvc.spec.accessModes ?? ['ReadWriteOnce'];
    try {
      await this.client.create(resourcePath('v1', 'persistentvolumes'), {
        apiVersion: 'v1',
        kind: 'PersistentVolume',
        metadata: { name: pvName, labels: { [AGENT_LABEL]: 'true' }, annotations: { 'pv.kubernetes.io/provisioned-by': 'celer-test-agent' } },
        spec: {
          capacity: { storage },
          accessModes,
          persistentVolumeReclaimPolicy: 'Delete',
          storageClassName: pvc.spec.storageClassName ?? '',
          volumeMode: pvc.spec.volumeMode ?? 'Filesystem',
          hostPath: { path: dir, type: 'DirectoryOrCreate' },
          claimRef: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', namespace: ns, name: pvc.metadata.name, uid },
        },
      });
    } catch (err) {
      if (!(err instanceof KubeError && err.status === 409)) throw err;
    }
    this.provisioned.set(uid, { pv: pvName, dir });
    await this.client.patch(resourcePath('v1', 'persistentvolumes', undefined, pvName, 'status'), { status: { phase: 'Bound' } });
    const claimPath = resourcePath('v1', 'persistentvolumeclaims', ns, pvc.metadata.name);
    await this.client.patch(claimPath, {
      metadata: { uid, annotations: { 'pv.kubernetes.io/bind-completed': 'yes', 'pv.kubernetes.io/bound-by-controller': 'yes' } },
      spec: { volumeName: pvName },
    });
    await this.client.patch(`${claimPath}/status`, { metadata: { uid }, status: { phase: 'Bound', accessModes, capacity: { storage } } });
    this.log(`claim ${ns}/${pvc.metadata.name} bound to ${pvName} (${dir})`);
  }

  private async bind(pod: Pod, pods: Pod[]): Promise<void> {
    const ns = pod.metadata.namespace ?? 'default';
    const key = Informer.key(pod);
    for (const v of pod.spec.volumes ?? []) {
      const claim = v.persistentVolumeClaim?.claimName;
      if (claim === undefined) continue;
      const pvc = this.allClaims().find((c) => c.metadata.namespace === ns && c.metadata.name === claim);
      if (pvc === undefined || (pvc.status?.phase !== 'Bound' && !this.provisioned.has(pvc.metadata.uid ?? ''))) {
        await this.markUnschedulable(pod, `persistentvolumeclaim "${claim}" not found or not bound`);
        return;
      }
    }
    const result = schedule(pod, this.nodes, pods.filter((p) => p.spec.nodeName !== undefined || this.boundUids.has(p.metadata.uid ?? '')));
    if ('unschedulable' in result) {
      await this.markUnschedulable(pod, result.unschedulable);
      return;
    }
    await this.client.create(resourcePath('v1', 'pods', ns, pod.metadata.name, 'binding'), {
      apiVersion: 'v1',
      kind: 'Binding',
      metadata: { name: pod.metadata.name, namespace: ns, uid: pod.metadata.uid },
      target: { apiVersion: 'v1', kind: 'Node', name: result.node },
    });
    this.boundUids.add(pod.metadata.uid ?? '');
    // Pods scheduled against this one must see it on its node before the watch catches up.
    pod.spec.nodeName = result.node;
    this.unschedulableMsg.delete(pod.metadata.uid ?? '');
    this.log(`pod ${key} bound to ${result.node}`);
  }

  private async markUnschedulable(pod: Pod, message: string): Promise<void> {
    const uid = pod.metadata.uid ?? '';
    if (this.unschedulableMsg.get(uid) === message) return;
    this.unschedulableMsg.set(uid, message);
    this.log(`pod ${Informer.key(pod)} unschedulable: ${message}`);
    await this.client.patch(resourcePath('v1', 'pods', pod.metadata.namespace, pod.metadata.name, 'status'), {
      metadata: { uid },
      status: {
        phase: 'Pending',
        conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message, lastTransitionTime: now(), lastProbeTime: null }],
      },
    });
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
      podIP: this.allocateIP(),
      hostIP: node?.ip ?? '127.0.0.1',
      dir: path.join(this.workDir, 'pods', `${ns}_${pod.metadata.name}_${uid}`),
      logDir: path.join(this.workDir, 'logs', `${ns}_${pod.metadata.name}_${uid}`),
      pod,
      startTime: now(),
      containers: pod.spec.containers.map((c) => this.newContainerRun(c, ns, pod.metadata.name, uid)),
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

  private newContainerRun(c: Container, _ns: string, _pod: string, _uid: string): ContainerRun {
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

  /** Materialises volumes; returns mount path -> local dir for one container. */
  private async mountsFor(run: PodRun, c: Container): Promise<Map<string, string>> {
    const mounts = new Map<string, string>(Object.entries(this.opts.pathMap ?? {}));
    for (const m of c.volumeMounts ?? []) {
      const v = (run.pod.spec.volumes ?? []).find((x) => x.name === m.name);
      if (v === undefined) throw new Error(`volume mount ${m.name}: no such volume`);
      let dir: string;
      if (v.persistentVolumeClaim !== undefined) {
        dir = this.volumeDir(run.namespace, v.persistentVolumeClaim.claimName);
      } else {
        dir = path.join(run.dir, 'volumes', v.name);
        const src = v.configMap ?? v.secret;
        if (src !== undefined) {
          const kind = v.configMap !== undefined ? 'ConfigMap' : 'Secret';
          const name = v.configMap?.name ?? v.secret?.secretName ?? '';
          const data = await this.lookup(run.namespace, kind, name);
          if (data === undefined && src.optional !== true) throw new Error(`volume ${v.name}: ${kind} ${name} not found`);
          mkdirSync(dir, { recursive: true });
          const items = src.items ?? Object.keys(data ?? {}).map((k) => ({ key: k, path: k }));
          for (const it of items) {
            const value = data?.[it.key];
            if (value === undefined) continue;
            mkdirSync(path.dirname(path.join(dir, it.path)), { recursive: true });
            writeFileSync(path.join(dir, it.path), value);
          }
        }
      }
      if (m.subPath !== undefined && m.subPath !== '') dir = path.join(dir, m.subPath);
      mkdirSync(v.configMap !== undefined || v.secret !== undefined ? path.dirname(dir) : dir, { recursive: true });
      mounts.set(m.mountPath, dir);
    }
    return mounts;
  }

  private async lookup(namespace: string, kind: 'ConfigMap' | 'Secret', name: string): Promise<Record<string, string> | undefined> {
    const obj = await this.client.getOrUndefined<ConfigMapOrSecret>(resourcePath('v1', kind === 'ConfigMap' ? 'configmaps' : 'secrets', namespace, name));
    if (obj === undefined) return undefined;
    const out: Record<string, string> = {};
    for (const [k, v] of Object.entries(obj.data ?? {})) out[k] = kind === 'Secret' ? Buffer.from(v, 'base64').toString('utf8') : v;
    for (const [k, v] of Object.entries(obj.binaryData ?? {})) out[k] = Buffer.from(v, 'base64').toString('utf8');
    return out;
  }

  /**
   * What a kubelet's service-account token mount gives a pod, in a form a local process can use:
   * the token, CA and namespace files under the usual mount path (rewritten like any mount), and
   * KUBECONFIG pointing at a kubeconfig with the ServiceAccount's token (a process outside a pod
   * has no KUBERNETES_SERVICE_HOST, so clients fall back to KUBECONFIG). The token is the one in
   * the ServiceAccount's token Secret (created by the controller-manager on 1.20).
   */
  private async serviceAccountCredentials(run: PodRun): Promise<{ dir: string; kubeconfig: string } | undefined> {
    if (this.opts.serviceAccountCredentials === false || run.pod.spec.automountServiceAccountToken === false) return undefined;
    const sa = run.pod.spec.serviceAccountName ?? 'default';
    const secrets = await this.client.list<ConfigMapOrSecret & { type?: string }>(resourcePath('v1', 'secrets', run.namespace), {
      fieldSelector: 'type=kubernetes.io/service-account-token',
    });
    const secret = secrets.items.find((x) => x.metadata.annotations?.['kubernetes.io/service-account.name'] === sa);
    const token = secret?.data?.token;
    if (token === undefined) throw new Error(`no token Secret for ServiceAccount ${run.namespace}/${sa} yet`);
    const dir = path.join(run.dir, 'serviceaccount');
    mkdirSync(dir, { recursive: true });
    const tokenText = Buffer.from(token, 'base64').toString('utf8');
    writeFileSync(path.join(dir, 'token'), tokenText, { mode: 0o600 });
    writeFileSync(path.join(dir, 'namespace'), run.namespace);
    const conn = this.client.conn;
    if (conn.ca !== undefined) writeFileSync(path.join(dir, 'ca.crt'), conn.ca);
    const kubeconfig = path.join(dir, 'kubeconfig');
    const cluster: Record<string, string> = { server: conn.server.toString().replace(/\/$/, '') };
    if (conn.ca !== undefined) cluster['certificate-authority-data'] = Buffer.from(conn.ca).toString('base64');
    writeFileSync(
      kubeconfig,
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Config',
        clusters: [{ name: 'in-cluster', cluster }],
        users: [{ name: sa, user: { token: tokenText } }],
        contexts: [{ name: 'in-cluster', context: { cluster: 'in-cluster', user: sa, namespace: run.namespace } }],
        'current-context': 'in-cluster',
      }),
      { mode: 0o600 },
    );
    return { dir, kubeconfig };
  }

  private async launchSpec(run: PodRun, c: Container): Promise<LaunchSpec> {
    const mounts = await this.mountsFor(run, c);
    const baseEnv: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: run.dir, TMPDIR: run.dir };
    const sa = await this.serviceAccountCredentials(run);
    if (sa !== undefined) {
      mounts.set('/var/run/secrets/kubernetes.io/serviceaccount', sa.dir);
      baseEnv.KUBECONFIG = sa.kubeconfig;
    }
    const executables: Record<string, string[]> = { ...this.opts.executables };
    return translateContainer(c, {
      pod: run.pod,
      podIP: run.podIP,
      hostIP: run.hostIP,
      mounts,
      executables,
      entrypoint: this.opts.entrypoint ?? (() => undefined),
      lookup: (kind, name) => this.lookup(run.namespace, kind, name),
      defaultCwd: run.dir,
      baseEnv,
    });
  }

  private async startPod(run: PodRun): Promise<void> {
    try {
      for (const ic of run.pod.spec.initContainers ?? []) {
        const cr = this.newContainerRun(ic, run.namespace, run.name, run.uid);
        const code = await this.runToCompletion(run, cr);
        if (run.terminating) return;
        if (code !== 0) throw new Error(`init container ${ic.name} exited with ${code}`);
      }
      run.initialized = true;
      for (const cr of run.containers) await this.startContainer(run, cr);
    } catch (err) {
      run.startError = (err as Error).message;
      this.log(`pod ${run.namespace}/${run.name}: ${run.startError}`);
      for (const cr of run.containers) cr.state = { waiting: { reason: 'CreateContainerConfigError', message: run.startError } };
      if (!run.terminating) setTimeout(() => {
        if (run.terminating) return;
        run.startError = undefined;
        void this.startPod(run);
      }, 2000).unref();
    }
    this.kick();
  }

  private spawnProcess(run: PodRun, cr: ContainerRun, launch: LaunchSpec): ChildProcess {
    cr.logPath = path.join(run.logDir, `${cr.spec.name}.log`);
    mkdirSync(launch.cwd, { recursive: true });
    const fd = openSync(cr.logPath, 'a');
    writeFileSync(fd, `### ${now()} start: ${launch.argv.join(' ')}\n`);
    try {
      return spawn(launch.argv[0] as string, launch.argv.slice(1), { cwd: launch.cwd, env: launch.env, stdio: ['ignore', fd, fd], detached: true });
    } finally {
      closeSync(fd);
    }
  }

  private async runToCompletion(run: PodRun, cr: ContainerRun): Promise<number> {
    const launch = await this.launchSpec(run, cr.spec);
    const proc = this.spawnProcess(run, cr, launch);
    cr.proc = proc;
    return new Promise<number>((resolve) => {
      proc.on('error', () => resolve(127));
      proc.on('exit', (code) => resolve(code ?? 137));
    });
  }

  private async startContainer(run: PodRun, cr: ContainerRun): Promise<void> {
    if (run.terminating) return;
    cr.launch = await this.launchSpec(run, cr.spec);
    const proc = this.spawnProcess(run, cr, cr.launch);
    cr.proc = proc;
    cr.ready = false;
    cr.readyStreak = 0;
    cr.failStreak = 0;
    cr.liveFailStreak = 0;
    const startedAt = now();
    cr.state = { running: { startedAt } };
    cr.started = cr.spec.startupProbe === undefined;
    this.log(`pod ${run.namespace}/${run.name} container ${cr.spec.name} started pid ${proc.pid ?? '?'} on ${run.podIP}: ${cr.launch.argv.join(' ')}`);
    cr.exited = new Promise<void>((resolve) => {
      let done = false;
      const onEnd = (code: number | null, signal: NodeJS.Signals | null, message?: string): void => {
        if (done) return;
        done = true;
        if (cr.proc === proc) cr.proc = undefined;
        this.onContainerExit(run, cr, startedAt, code, signal, message);
        resolve();
      };
      proc.on('error', (err) => onEnd(127, null, err.message));
      proc.on('exit', (code, signal) => onEnd(code, signal));
    });
    this.scheduleProbes(run, cr);
    this.kick();
  }

  private onContainerExit(run: PodRun, cr: ContainerRun, startedAt: string, code: number | null, signal: NodeJS.Signals | null, message?: string): void {
    if (cr.probeTimer !== undefined) clearTimeout(cr.probeTimer);
    cr.probeTimer = undefined;
    cr.ready = false;
    const exitCode = code ?? 128 + (signal === 'SIGKILL' ? 9 : signal === 'SIGTERM' ? 15 : 1);
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
    this.log(`pod ${run.namespace}/${run.name} container ${cr.spec.name} exited (code ${code}, signal ${signal})${message !== undefined ? `: ${message}` : ''}`);
    cr.state = terminated;
    if (run.terminating) {
      this.kick();
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
        this.startContainer(run, cr).catch((err: Error) => {
          cr.state = { waiting: { reason: 'CreateContainerConfigError', message: err.message } };
          this.kick();
        });
      }, delay);
    }
    this.kick();
  }

  private probeDelay(ms: number | undefined, dflt: number): number {
    return Math.min(ms ?? dflt, this.opts.probePeriodCapMs ?? 1000);
  }

  private scheduleProbes(run: PodRun, cr: ContainerRun): void {
    const spec = cr.spec;
    const proc = cr.proc;
    const period = this.probeDelay(
      Math.min(
        (spec.readinessProbe?.periodSeconds ?? 10) * 1000,
        (spec.livenessProbe?.periodSeconds ?? 10) * 1000,
        (spec.startupProbe?.periodSeconds ?? 10) * 1000,
      ),
      10_000,
    );
    const firstDelay = this.probeDelay((spec.readinessProbe?.initialDelaySeconds ?? 0) * 1000, 0);
    const round = async (): Promise<void> => {
      if (cr.proc !== proc || run.terminating) return;
      if (!cr.started && spec.startupProbe !== undefined) {
        if (await this.probe(run, cr, spec.startupProbe)) cr.started = true;
      }
      if (cr.started) {
        const wasReady = cr.ready;
        if (spec.readinessProbe === undefined) cr.ready = true;
        else if (await this.probe(run, cr, spec.readinessProbe)) {
          cr.failStreak = 0;
          if (++cr.readyStreak >= (spec.readinessProbe.successThreshold ?? 1)) cr.ready = true;
        } else {
          cr.readyStreak = 0;
          if (++cr.failStreak >= (spec.readinessProbe.failureThreshold ?? 3) || !cr.ready) cr.ready = false;
        }
        if (spec.livenessProbe !== undefined && proc !== undefined && cr.proc === proc) {
          if (await this.probe(run, cr, spec.livenessProbe)) cr.liveFailStreak = 0;
          else if (++cr.liveFailStreak >= (spec.livenessProbe.failureThreshold ?? 3)) {
            this.log(`pod ${run.namespace}/${run.name} container ${spec.name} failed its liveness probe; killing it`);
            cr.liveFailStreak = 0;
            killGroup(proc, 'SIGTERM');
          }
        }
        if (wasReady !== cr.ready) {
          this.log(`pod ${run.namespace}/${run.name} container ${spec.name} ${cr.ready ? 'ready' : 'not ready'}`);
          this.kick();
        }
      }
      if (cr.proc === proc && !run.terminating) cr.probeTimer = setTimeout(() => void round(), period);
    };
    cr.probeTimer = setTimeout(() => void round(), firstDelay);
  }

  private async probe(run: PodRun, cr: ContainerRun, p: Probe): Promise<boolean> {
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
        const local = this.opts.executables?.[exe] ?? this.opts.executables?.[path.posix.basename(exe)] ?? [exe];
        return await new Promise<boolean>((resolve) => {
          const child = spawn(local[0] as string, [...local.slice(1), ...argv.slice(1)], { cwd: launch?.cwd, env: launch?.env, stdio: 'ignore', timeout });
          child.on('error', () => resolve(false));
          child.on('exit', (code) => resolve(code === 0));
        });
      }
      return true;
    } catch (err) {
      this.log(`probe ${run.namespace}/${run.name}: ${(err as Error).message}`);
      return false;
    }
  }

  /** SIGTERM every process of the pod, SIGKILL after graceMs; resolves when all have exited. */
  private async terminate(run: PodRun, graceMs: number): Promise<void> {
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
      this.log(`pod ${run.namespace}/${run.name}: grace period over, SIGKILL`);
      for (const cr of run.containers) if (cr.proc !== undefined) killGroup(cr.proc, 'SIGKILL');
      await exited;
    }
    this.runs.delete(run.uid);
    this.usedIPs.delete(run.podIP);
    rmSync(run.dir, { recursive: true, force: true });
  }

  private async deletePod(pod: Pod): Promise<void> {
    try {
      await this.client.delete(resourcePath('v1', 'pods', pod.metadata.namespace, pod.metadata.name), {
        apiVersion: 'v1',
        kind: 'DeleteOptions',
        gracePeriodSeconds: 0,
        preconditions: { uid: pod.metadata.uid },
      });
      this.log(`pod ${Informer.key(pod)} removed`);
    } catch (err) {
      if (!(err instanceof KubeError && (err.status === 404 || err.status === 409))) this.log(`delete ${Informer.key(pod)}: ${(err as Error).message}`);
    }
  }

  private async reportStatus(run: PodRun): Promise<void> {
    const pod = run.pod;
    const cs: ContainerStatus[] = run.containers.map((cr) => ({
      name: cr.spec.name,
      image: cr.spec.image,
      imageID: `celer-test-agent://${cr.spec.image}`,
      ...(cr.proc?.pid !== undefined ? { containerID: `celer-test-agent://${run.uid}/${cr.spec.name}/${cr.proc.pid}` } : {}),
      ready: cr.ready,
      started: cr.proc !== undefined && cr.started,
      restartCount: cr.restartCount,
      state: cr.state,
      lastState: cr.lastState,
    }));
    const allReady = run.containers.length > 0 && run.containers.every((c) => c.ready);
    const terminatedCodes = run.containers.map((c) => c.state.terminated?.exitCode);
    let phase: PodStatus['phase'] = 'Running';
    if (!run.initialized || run.containers.every((c) => c.state.waiting?.reason === 'ContainerCreating' || c.state.waiting?.reason === 'CreateContainerConfigError')) phase = 'Pending';
    if (terminatedCodes.every((c) => c !== undefined)) phase = terminatedCodes.every((c) => c === 0) ? 'Succeeded' : 'Failed';
    const cond = (type: string, ok: boolean, reason?: string): PodCondition => {
      const status = ok ? 'True' : 'False';
      const prev = run.conditionTimes.get(type);
      const time = prev !== undefined && prev.status === status ? prev.time : now();
      run.conditionTimes.set(type, { status, time });
      return { type, status, lastProbeTime: null, lastTransitionTime: time, ...(ok || reason === undefined ? {} : { reason }) };
    };
    const status: PodStatus = {
      phase,
      hostIP: run.hostIP,
      podIP: run.podIP,
      podIPs: [{ ip: run.podIP }],
      startTime: run.startTime,
      conditions: [
        cond('Initialized', run.initialized, 'ContainersNotInitialized'),
        cond('Ready', allReady, 'ContainersNotReady'),
        cond('ContainersReady', allReady, 'ContainersNotReady'),
        cond('PodScheduled', true),
      ],
      containerStatuses: cs,
    };
    const body = JSON.stringify(status);
    if (body === run.lastPatched) return;
    try {
      await this.client.patch(resourcePath('v1', 'pods', run.namespace, run.name, 'status'), { metadata: { uid: run.uid }, status });
      run.lastPatched = body;
    } catch (err) {
      if (!(err instanceof KubeError && (err.status === 404 || err.status === 409))) this.log(`status ${run.namespace}/${pod.metadata.name}: ${(err as Error).message}`);
    }
  }

  /** Synchronous last resort on process exit: no child outlives the test process. */
  private killAllNow(): void {
    for (const run of this.runs.values()) {
      for (const cr of run.containers) {
        const proc = cr.proc;
        if (proc !== undefined) killGroup(proc, 'SIGKILL');
      }
    }
  }
}

function killGroup(proc: ChildProcess, signal: NodeJS.Signals): void {
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

function appendLog(file: string, text: string): void {
  if (file === '') return;
  try {
    const fd = openSync(file, 'a');
    writeFileSync(fd, text);
    closeSync(fd);
  } catch {
    // the pod directory may already be gone
  }
}
