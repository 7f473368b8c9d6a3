// Celer-specific helpers of the real-Kubernetes suites: installing the chart, credentials of a
// ServiceAccount, running the operator as a local process, and reading CelerClusters.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { KubeObject } from '../agent/kube.ts';
import { background, nodeBin, repoRoot, runOk, waitFor, type Background, type KubeEnv } from './kube-env.ts';

export const chartDir = path.join(repoRoot, 'charts', 'celer-operator');
export const celerBin = path.join(repoRoot, 'bin', 'celer');

export interface Condition {
  type: string;
  status: string;
  reason: string;
  message: string;
  observedGeneration: number;
}

export interface CelerClusterObject extends KubeObject {
  spec: Record<string, unknown>;
  status?: {
    phase?: string;
    reason?: string;
    observedGeneration?: number;
    conditions?: Condition[];
    nodes?: { name: string; role: string; version: string; ready: boolean }[];
    readyReplicas?: string;
  };
}

export const clusterPath = (ns: string, name?: string): string =>
  `/apis/celer.io/v1alpha1/namespaces/${ns}/celerclusters${name === undefined ? '' : `/${name}`}`;

export function getCluster(env: KubeEnv, ns: string, name: string): Promise<CelerClusterObject> {
  return env.client.get<CelerClusterObject>(clusterPath(ns, name));
}

export function condition(c: CelerClusterObject, type: string): Condition | undefined {
  return c.status?.conditions?.find((x) => x.type === type);
}

/** `helm install` of charts/celer-operator into `ns` (created if needed); returns helm's stdout. */
export function helmInstall(env: KubeEnv, helm: string, release: string, ns: string, args: string[] = []): Promise<string> {
  return runOk(helm, ['install', release, chartDir, '--namespace', ns, '--create-namespace', ...args], {
    env: { ...process.env, KUBECONFIG: env.kubeconfig },
    timeoutMs: 180_000,
  });
}

/**
 * A kubeconfig that authenticates as ServiceAccount ns/sa, with the token of its token Secret
 * (the controller-manager creates one per ServiceAccount on 1.20).
 */
export async function serviceAccountKubeconfig(env: KubeEnv, ns: string, sa: string, file: string): Promise<string> {
  const token = await waitFor(`a token Secret for ServiceAccount ${ns}/${sa}`, async () => {
    const secrets = await env.client.list<KubeObject & { data?: Record<string, string> }>(`/api/v1/namespaces/${ns}/secrets`, {
      fieldSelector: 'type=kubernetes.io/service-account-token',
    });
    const s = secrets.items.find((x) => x.metadata.annotations?.['kubernetes.io/service-account.name'] === sa);
    return s?.data?.token === undefined ? undefined : Buffer.from(s.data.token, 'base64').toString('utf8');
  });
  const admin = JSON.parse(readFileSync(env.kubeconfig, 'utf8')) as { clusters: unknown[] };
  writeFileSync(
    file,
    JSON.stringify({
      apiVersion: 'v1',
      kind: 'Config',
      clusters: admin.clusters,
      users: [{ name: sa, user: { token } }],
      contexts: [{ name: sa, context: { cluster: 'celer-e2e', user: sa, namespace: ns } }],
      'current-context': sa,
    }),
    { mode: 0o600 },
  );
  return file;
}

export interface LocalOperator {
  process: Background;
  /** http://host:port of its /metrics and /healthz. */
  metricsUrl: string;
}

/** Runs `node operator/main.ts --kubeconfig FILE ...` and waits for its metrics address. */
export async function startLocalOperator(kubeconfig: string, logFile: string, extraArgs: string[]): Promise<LocalOperator> {
  const proc = background(nodeBin, [path.join(repoRoot, 'operator', 'main.ts'), '--kubeconfig', kubeconfig, '--metrics-address', '127.0.0.1:0', ...extraArgs], logFile);
  const address = await waitFor(
    'the operator to log its metrics address',
    () => {
      if (proc.proc.exitCode !== null) throw new Error(`the operator exited with ${proc.proc.exitCode}:\n${proc.output()}`);
      for (const line of readFileSync(logFile, 'utf8').split('\n')) {
        if (!line.startsWith('{')) continue;
        const rec = JSON.parse(line) as { msg?: string; address?: string };
        if (rec.msg === 'metrics listening' && rec.address !== undefined) return rec.address;
      }
      return undefined;
    },
    30_000,
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n${proc.output()}`);
  });
  return { process: proc, metricsUrl: `http://${address}` };
}

/** `celer write` of one event to a node; returns the CLI's output. */
export function celerWrite(addr: string, key: string, type: string, data: string): Promise<string> {
  return runOk(celerBin, ['write', '--addr', addr, key, '--type', type, '--data', data], { timeoutMs: 30_000 });
}

/** `celer read` of one stream (the CLI prints JSON lines). */
export function celerRead(addr: string, key: string): Promise<string> {
  return runOk(celerBin, ['read', '--addr', addr, key], { timeoutMs: 30_000 });
}
