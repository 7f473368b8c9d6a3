// `celer cluster status`: both nodes' view of the cluster, side by side, from their GET /status
// (the JSON shape is dataplane/server/status.ts).
//
// Given one node's HTTP address it asks that node, learns its peer from status.peer and asks the
// peer too. The peer's HTTP address is derived by the cluster convention (HTTP port = client
// port + 1) from status.peer.client, or from status.leader when that names the other node;
// status.peer.address is the replication address and says nothing about HTTP. Given "A,B" it
// asks both and derives nothing. A node that does not answer is shown as unreachable; the exit
// status is 1 only when none answers.
import type { NodeStatus, ShardStatus } from '../server/status.ts';

export interface ClusterStatusOptions {
  /** HTTP addresses ("host:port"): one (the peer is derived from its answer) or several. */
  addrs: string[];
  /** Print the raw /status answers as JSON instead of the table. */
  json: boolean;
  /** Per request (default 2 000 ms). */
  timeoutMs?: number;
  out: (line: string) => void;
}

/** What one node said, or why it said nothing. */
export interface NodeView {
  /** The HTTP address asked. */
  http: string;
  /** How the address was found: given on the command line, or derived from the other node's status. */
  source: 'given' | 'peer';
  status?: NodeStatus;
  error?: string;
}

const DEFAULT_TIMEOUT_MS = 2_000;

const HOST_PORT = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/;

function splitHostPort(address: string): { host: string; port: number } | undefined {
  const m = HOST_PORT.exec(address);
  if (m === null) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65_535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}

function joinHostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** "A" or "A,B" → the addresses, each checked to be host:port; throws with a message for the user. */
export function parseHttpAddrs(list: string): string[] {
  const addrs = list
    .split(',')
    .map((a) => a.trim())
    .filter((a) => a !== '');
  if (addrs.length === 0) throw new Error('--addr needs HOST:PORT (the HTTP address of a node), or A,B for both nodes');
  for (const a of addrs) {
    if (splitHostPort(a) === undefined) throw new Error(`--addr: "${a}" is not HOST:PORT`);
  }
  return addrs;
}

/** The HTTP address of a node whose client address is `client`: by convention its port + 1. */
export function httpFromClient(client: string): string | undefined {
  const hp = splitHostPort(client);
  if (hp === undefined || hp.port >= 65_535) return undefined;
  return joinHostPort(hp.host, hp.port + 1);
}

/** The peer's HTTP address as far as `s` tells it, or undefined (standalone, or not known). */
export function peerHttpAddress(s: NodeStatus): string | undefined {
  if (s.peer === null || s.peer === undefined) return undefined;
  if (typeof s.peer.client === 'string') return httpFromClient(s.peer.client);
  // A follower knows the leader's client address: when that is not this node, it is the peer.
  if (typeof s.leader === 'string' && s.leader !== s.listen?.client) return httpFromClient(s.leader);
  return undefined;
}

function looksLikeStatus(v: unknown): v is NodeStatus {
  if (v === null || typeof v !== 'object') return false;
  const o = v as Record<string, unknown>;
  return typeof o.nodeId === 'string' && typeof o.role === 'string' && Array.isArray(o.shards);
}

/** GET http://ADDR/status; rejects with a one-line reason. */
export async function fetchStatus(http: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<NodeStatus> {
  let res: Response;
  try {
    res = await fetch(`http://${http}/status`, { signal: AbortSignal.timeout(timeoutMs), headers: { accept: 'application/json' } });
  } catch (e) {
    const err = e as Error & { cause?: { code?: string; message?: string } };
    if (err.name === 'TimeoutError') throw new Error(`no answer within ${timeoutMs} ms`);
    throw new Error(err.cause?.code ?? err.cause?.message ?? err.message);
  }
  const body = await res.text();
  if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${body.trim().slice(0, 200)}`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new Error('the answer is not JSON');
  }
  if (!looksLikeStatus(parsed)) throw new Error('the answer is not a Celer /status document');
  return parsed;
}

async function view(http: string, source: NodeView['source'], timeoutMs: number): Promise<NodeView> {
  try {
    return { http, source, status: await fetchStatus(http, timeoutMs) };
  } catch (e) {
    return { http, source, error: (e as Error).message };
  }
}

/** Asks the given nodes, and with a single address also the peer it names. */
export async function collectViews(addrs: string[], timeoutMs = DEFAULT_TIMEOUT_MS): Promise<NodeView[]> {
  const views = await Promise.all(addrs.map((a) => view(a, 'given', timeoutMs)));
  if (addrs.length === 1) {
    const s = views[0]!.status;
    const peer = s === undefined ? undefined : peerHttpAddress(s);
    if (peer !== undefined && peer !== addrs[0]) views.push(await view(peer, 'peer', timeoutMs));
  }
  return views;
}

const dash = '-';

function shardTriple(sh: ShardStatus | undefined): string {
  if (sh === undefined) return dash;
  const durable = sh.durableSeq ?? sh.writeSeq;
  const committed = sh.committedSeq ?? sh.commitSeq;
  const placed = sh.placedSeq ?? durable;
  const state = sh.state !== 'serving' ? ` ${sh.state}` : sh.writable === false ? ' read-only' : '';
  return `${placed}/${durable}/${committed}${state}`;
}

function peerCell(s: NodeStatus): [string, string] {
  if (s.peer === null || s.peer === undefined) return [s.role === 'standalone' ? 'none' : dash, dash];
  const link = s.peer.connected === undefined ? 'unknown' : s.peer.connected ? 'connected' : 'disconnected';
  return [link, s.peer.lagRecords === null || s.peer.lagRecords === undefined ? dash : String(s.peer.lagRecords)];
}

function s3Cell(s: NodeStatus): string {
  if (s.s3Fallback === undefined) return dash;
  return s.s3Fallback.active ? `active (${s.s3Fallback.batches} batches)` : `off (${s.s3Fallback.batches} batches)`;
}

/** Lays rows out in columns separated by two spaces; a short row's last cell (a note) sets no width. */
function columns(rows: string[][]): string[] {
  const full = Math.max(...rows.map((r) => r.length));
  const widths: number[] = [];
  for (const r of rows) {
    r.forEach((c, i) => {
      if (i < r.length - 1 || r.length === full) widths[i] = Math.max(widths[i] ?? 0, c.length);
    });
  }
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

/** The table `celer cluster status` prints: one row per node, then one row per shard. */
export function formatViews(views: NodeView[]): string[] {
  const rows: string[][] = [['node', 'http', 'role', 'epoch', 'leader', 'lease ms', 'ready', 'peer', 'lag', 's3 fallback']];
  for (const v of views) {
    const s = v.status;
    const http = v.source === 'peer' ? `${v.http} (peer)` : v.http;
    if (s === undefined) {
      rows.push(['?', http, `unreachable: ${v.error ?? 'no answer'}`]);
      continue;
    }
    const [link, lag] = peerCell(s);
    rows.push([
      s.nodeId,
      http,
      s.role,
      String(s.epoch),
      s.leader ?? dash,
      s.leaseRemainingMs === null || s.leaseRemainingMs === undefined ? dash : String(s.leaseRemainingMs),
      s.ready ? 'yes' : 'no',
      link,
      lag,
      s3Cell(s),
    ]);
  }
  const lines = columns(rows);
  const answered = views.filter((v) => v.status !== undefined);
  const shardIds = [...new Set(answered.flatMap((v) => v.status!.shards.map((sh) => sh.shard)))].sort((a, b) => a - b);
  if (shardIds.length > 0) {
    const head = ['shard', ...answered.map((v) => `${v.status!.nodeId} placed/durable/committed`)];
    const shardRows = shardIds.map((id) => [String(id), ...answered.map((v) => shardTriple(v.status!.shards.find((sh) => sh.shard === id)))]);
    lines.push('', ...columns([head, ...shardRows]));
  }
  if (views.length === 1 && answered.length === 1) {
    const s = answered[0]!.status!;
    if (s.peer === null) lines.push('', 'no peer: this node runs standalone');
    else lines.push('', `peer ${s.peer.address ?? '(address unknown)'}: its HTTP address is not known from this node's status; pass --addr A,B`);
  }
  return lines;
}

/** Runs the command; resolves with the exit status (1 when no node answered). */
export async function clusterStatus(opts: ClusterStatusOptions): Promise<number> {
  const views = await collectViews(opts.addrs, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
  if (opts.json) {
    opts.out(JSON.stringify(views.map((v) => ({ http: v.http, source: v.source, status: v.status ?? null, ...(v.error !== undefined ? { error: v.error } : {}) })), null, 2));
  } else {
    for (const line of formatViews(views)) opts.out(line);
  }
  return views.some((v) => v.status !== undefined) ? 0 : 1;
}
