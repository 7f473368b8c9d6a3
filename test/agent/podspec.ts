// Turns a pod's container spec into a local process launch: environment (with fieldRef,
// ConfigMap and Secret sources), Kubernetes' $(VAR) expansion, the image's entrypoint, and the two
// rewrites that stand in for a container runtime:
//   - network: every pod gets its own loopback address (127.x.y.z; Linux routes all of 127/8 to
//     lo), used as its podIP. Addresses the process would bind or dial inside its own network
//     namespace (0.0.0.0, [::], localhost, 127.0.0.1, an empty host) are rewritten to the podIP,
//     so ports stay exactly as the pod spec declares them and Services/probes reach them.
//   - filesystem: each volume mount path (and configured image paths) is rewritten to a local
//     directory wherever it appears as a prefix in the command, args and env values.
import path from 'node:path';
import type { Container, EnvVar, Pod } from './types.ts';

export interface LaunchSpec {
  argv: string[];
  env: Record<string, string>;
  cwd: string;
}

export interface ImageEntrypoint {
  command: string[];
  args?: string[];
}

export interface TranslateContext {
  pod: Pod;
  podIP: string;
  hostIP: string;
  /** mount path (in the container) -> local directory; longest prefix wins. */
  mounts: Map<string, string>;
  /** Executable basename (or absolute path in the image) -> local argv prefix. */
  executables: Record<string, string[]>;
  /** Image entrypoint when the container sets no command. */
  entrypoint: (image: string) => ImageEntrypoint | undefined;
  /** Fetches a key of a ConfigMap or Secret (decoded); undefined when absent. */
  lookup: (kind: 'ConfigMap' | 'Secret', name: string, key?: string) => Promise<Record<string, string> | undefined>;
  /** Working directory when the container sets none (or sets one that is not mounted). */
  defaultCwd: string;
  /** Base environment (PATH and the like). */
  baseEnv: Record<string, string>;
}

/** Kubernetes' $(VAR) expansion: $(NAME) from env when defined, $$ escapes, unknown left as is. */
export function expand(s: string, env: Record<string, string>): string {
  return s.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)/g, (m, name: string | undefined) => {
    if (m === '$$') return '$';
    return name !== undefined && Object.hasOwn(env, name) ? (env[name] as string) : m;
  });
}

const LOCAL_HOSTS = new Set(['', '0.0.0.0', '[::]', '::', 'localhost', '127.0.0.1', '[::1]']);

/**
 * Rewrites a value that is an address on the pod's own network namespace to the pod's IP:
 * "0.0.0.0:7400" -> "127.64.0.3:7400", "--http=:7401" -> "--http=127.64.0.3:7401",
 * "http://localhost:7401/x" -> "http://127.64.0.3:7401/x". Other values are returned unchanged.
 */
export function rewriteAddress(value: string, podIP: string): string {
  const flag = /^(--?[A-Za-z0-9][\w.-]*=)(.*)$/.exec(value);
  const prefix = flag?.[1] ?? '';
  const rest = flag?.[2] ?? value;
  const url = /^([a-z][a-z0-9+.-]*:\/\/)([^/:]*|\[[^\]]*\]):(\d+)(.*)$/i.exec(rest);
  if (url !== null && LOCAL_HOSTS.has(url[2] ?? '')) return `${prefix}${url[1]}${podIP}:${url[3]}${url[4]}`;
  const hp = /^(\[[^\]]*\]|[^:/\s]*):(\d{1,5})$/.exec(rest);
  if (hp !== null && LOCAL_HOSTS.has(hp[1] ?? '')) return `${prefix}${podIP}:${hp[2]}`;
  return value;
}

/** Replaces the longest matching mount-path prefix in `value` (anywhere after a '=' or at start). */
export function rewritePaths(value: string, mounts: Map<string, string>): string {
  const keys = [...mounts.keys()].sort((a, b) => b.length - a.length);
  const rewriteOne = (s: string): string => {
    for (const k of keys) {
      if (s === k || s.startsWith(k.endsWith('/') ? k : `${k}/`)) return (mounts.get(k) as string) + s.slice(k.length);
    }
    return s;
  };
  const eq = value.indexOf('=');
  if (value.startsWith('-') && eq > 0) return value.slice(0, eq + 1) + rewriteOne(value.slice(eq + 1));
  return rewriteOne(value);
}

function fieldRef(pod: Pod, fieldPath: string, podIP: string, hostIP: string): string {
  const m = /^metadata\.(labels|annotations)\['(.*)'\]$/.exec(fieldPath);
  if (m !== null) {
    const map = m[1] === 'labels' ? pod.metadata.labels : pod.metadata.annotations;
    return map?.[m[2] ?? ''] ?? '';
  }
  switch (fieldPath) {
    case 'metadata.name':
      return pod.metadata.name;
    case 'metadata.namespace':
      return pod.metadata.namespace ?? 'default';
    case 'metadata.uid':
      return pod.metadata.uid ?? '';
    case 'spec.nodeName':
      return pod.spec.nodeName ?? '';
    case 'spec.serviceAccountName':
      return pod.spec.serviceAccountName ?? 'default';
    case 'status.podIP':
    case 'status.podIPs':
      return podIP;
    case 'status.hostIP':
      return hostIP;
    default:
      throw new Error(`env fieldRef ${fieldPath} is not supported by the test agent`);
  }
}

async function envVarValue(v: EnvVar, env: Record<string, string>, c: Container, ctx: TranslateContext): Promise<string | undefined> {
  if (v.value !== undefined) return expand(v.value, env);
  const from = v.valueFrom;
  if (from === undefined) return '';
  if (from.fieldRef !== undefined) return fieldRef(ctx.pod, from.fieldRef.fieldPath, ctx.podIP, ctx.hostIP);
  if (from.resourceFieldRef !== undefined) {
    const [kind, res] = from.resourceFieldRef.resource.split('.');
    const q = (kind === 'limits' ? c.resources?.limits : c.resources?.requests)?.[res ?? ''];
    return q ?? (res === 'cpu' ? '2' : '0');
  }
  const ref = from.configMapKeyRef ?? from.secretKeyRef;
  if (ref !== undefined) {
    const data = await ctx.lookup(from.configMapKeyRef !== undefined ? 'ConfigMap' : 'Secret', ref.name, ref.key);
    const value = data?.[ref.key];
    if (value === undefined && ref.optional !== true) {
      throw new Error(`env ${v.name}: key ${ref.key} of ${from.configMapKeyRef !== undefined ? 'ConfigMap' : 'Secret'} ${ref.name} not found`);
    }
    return value;
  }
  return '';
}

/** Builds the local launch for `c`; throws with a kubelet-like message when it cannot. */
export async function translateContainer(c: Container, ctx: TranslateContext): Promise<LaunchSpec> {
  const env: Record<string, string> = {};
  for (const src of c.envFrom ?? []) {
    const ref = src.configMapRef ?? src.secretRef;
    if (ref === undefined) continue;
    const data = await ctx.lookup(src.configMapRef !== undefined ? 'ConfigMap' : 'Secret', ref.name);
    if (data === undefined) {
      if (ref.optional === true) continue;
      throw new Error(`envFrom: ${src.configMapRef !== undefined ? 'ConfigMap' : 'Secret'} ${ref.name} not found`);
    }
    for (const [k, v] of Object.entries(data)) env[(src.prefix ?? '') + k] = v;
  }
  for (const v of c.env ?? []) {
    const value = await envVarValue(v, env, c, ctx);
    if (value !== undefined) env[v.name] = value;
  }
  const image = ctx.entrypoint(c.image);
  const command = c.command ?? image?.command;
  const args = c.args ?? (c.command === undefined ? image?.args : undefined) ?? [];
  if (command === undefined || command.length === 0) throw new Error(`container ${c.name}: no command and no known entrypoint for image ${c.image}`);
  const fix = (s: string): string => rewritePaths(rewriteAddress(s, ctx.podIP), ctx.mounts);
  const expanded = [...command, ...args].map((a) => fix(expand(a, env)));
  const exe = expanded[0] as string;
  const local = ctx.executables[exe] ?? ctx.executables[path.posix.basename(exe)];
  const argv = local !== undefined ? [...local, ...expanded.slice(1)] : expanded;
  const finalEnv: Record<string, string> = { ...ctx.baseEnv, HOSTNAME: ctx.pod.spec.hostname ?? ctx.pod.metadata.name };
  for (const [k, v] of Object.entries(env)) finalEnv[k] = fix(v);
  let cwd = ctx.defaultCwd;
  if (c.workingDir !== undefined) {
    const mapped = rewritePaths(c.workingDir, ctx.mounts);
    if (mapped !== c.workingDir) cwd = mapped;
  }
  return { argv, env: finalEnv, cwd };
}
