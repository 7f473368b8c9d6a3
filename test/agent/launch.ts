// A container's local launch: materialises the pod's volumes (claim directories, ConfigMap and
// Secret files, the pathMap option) as mount path -> local directory, writes the pod's
// ServiceAccount credentials the way a kubelet's token mount would, and turns the container into
// argv, cwd and environment with translateContainer (test/agent/podspec.ts).
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { AgentContext, PodRun } from './context.ts';
import { resourcePath } from './kube.ts';
import { volumeDir } from './placement.ts';
import { translateContainer, type LaunchSpec } from './podspec.ts';
import type { ConfigMapOrSecret, Container } from './types.ts';

/** Materialises volumes; returns mount path -> local dir for one container. */
async function mountsFor(ctx: AgentContext, run: PodRun, c: Container): Promise<Map<string, string>> {
  const mounts = new Map<string, string>(Object.entries(ctx.opts.pathMap ?? {}));
  for (const m of c.volumeMounts ?? []) {
    const v = (run.pod.spec.volumes ?? []).find((x) => x.name === m.name);
    if (v === undefined) throw new Error(`volume mount ${m.name}: no such volume`);
    let dir: string;
    if (v.persistentVolumeClaim !== undefined) {
      dir = volumeDir(ctx.workDir, run.namespace, v.persistentVolumeClaim.claimName);
    } else {
      dir = path.join(run.dir, 'volumes', v.name);
      const src = v.configMap ?? v.secret;
      if (src !== undefined) {
        const kind = v.configMap !== undefined ? 'ConfigMap' : 'Secret';
        const name = v.configMap?.name ?? v.secret?.secretName ?? '';
        const data = await lookup(ctx, run.namespace, kind, name);
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

async function lookup(ctx: AgentContext, namespace: string, kind: 'ConfigMap' | 'Secret', name: string): Promise<Record<string, string> | undefined> {
  const obj = await ctx.client.getOrUndefined<ConfigMapOrSecret>(resourcePath('v1', kind === 'ConfigMap' ? 'configmaps' : 'secrets', namespace, name));
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
async function serviceAccountCredentials(ctx: AgentContext, run: PodRun): Promise<{ dir: string; kubeconfig: string } | undefined> {
  if (ctx.opts.serviceAccountCredentials === false || run.pod.spec.automountServiceAccountToken === false) return undefined;
  const sa = run.pod.spec.serviceAccountName ?? 'default';
  const secrets = await ctx.client.list<ConfigMapOrSecret & { type?: string }>(resourcePath('v1', 'secrets', run.namespace), {
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
  const conn = ctx.client.conn;
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

/** Argv, cwd and environment of container `c` of the pod, with its volumes and credentials in place. */
export async function launchSpec(ctx: AgentContext, run: PodRun, c: Container): Promise<LaunchSpec> {
  const mounts = await mountsFor(ctx, run, c);
  const baseEnv: Record<string, string> = { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: run.dir, TMPDIR: run.dir };
  const sa = await serviceAccountCredentials(ctx, run);
  if (sa !== undefined) {
    mounts.set('/var/run/secrets/kubernetes.io/serviceaccount', sa.dir);
    baseEnv.KUBECONFIG = sa.kubeconfig;
  }
  const executables: Record<string, string[]> = { ...ctx.opts.executables };
  return translateContainer(c, {
    pod: run.pod,
    podIP: run.podIP,
    hostIP: run.hostIP,
    mounts,
    executables,
    entrypoint: ctx.opts.entrypoint ?? (() => undefined),
    lookup: (kind, name) => lookup(ctx, run.namespace, kind, name),
    defaultCwd: run.dir,
    baseEnv,
  });
}
