// The agent's opt-in pod network (AgentOptions.podNetwork 'netns'): real, non-loopback pod IPs,
// which the kube-controller-manager's endpoints controller accepts (it refuses 127/8, so with
// loopback pod IPs a Service's Endpoints stay empty).
//
//   - One Linux bridge per agent (`cbr<id>`, 10.<N>.0.1/16, N random in 200..249 so two agents
//     on one machine do not collide), created at start and deleted at stop.
//   - Each pod gets a network namespace (`celer-<id>-<k>`), a veth pair with one end on the
//     bridge and the other inside as 10.<N>.<k/250>.<k%250+2>, loopback up and a default route
//     via the bridge. A pod's IP is stable per namespace/name, so a StatefulSet pod restarted
//     under the same name comes back at the same address (like a stable DNS name would resolve).
//   - Containers run under `ip netns exec NS`, which bind-mounts /etc/netns/NS/hosts over
//     /etc/hosts: that file is the agent's stand-in for cluster DNS. It lists every pod the agent
//     knows as `<hostname>.<subdomain>.<namespace>.svc[.cluster.local]` (the names a headless
//     Service gives StatefulSet pods), and is rewritten in place (same inode, so the bind mount
//     sees it) whenever a pod appears.
//   - Processes inside reach the host at the bridge address only (the namespace's own 127.0.0.1
//     is its own), so servers the pods need (the test S3 server) must also listen there.
// Every address lives inside namespaces and links this agent created; stop() removes them all.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** At most this many pods per agent network (addresses 10.N.0.2 .. 10.N.250.251). */
export const MAX_PODS = 250 * 250;

function ip(args: string[]): void {
  execFileSync('ip', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 10_000 });
}

export class PodNetwork {
  readonly bridge: string;
  /** The host's address on the bridge: what pods dial to reach servers on the host. */
  readonly hostAddress: string;
  private readonly subnet: number;
  private readonly id: string;
  /** namespace/name -> pod index (stable across restarts of the same pod name). */
  private readonly index = new Map<string, number>();
  /** namespace/name -> DNS names of that pod. */
  private readonly names = new Map<string, string[]>();
  /** Network namespaces that exist now -> the uid of the pod that owns it. */
  private readonly live = new Map<string, string>();
  private hostsText = '';

  constructor() {
    this.subnet = 200 + Math.floor(Math.random() * 50);
    this.id = Math.floor(Math.random() * 0xffff).toString(16).padStart(4, '0');
    this.bridge = `cbr${this.id}`;
    this.hostAddress = `10.${this.subnet}.0.1`;
  }

  /** Creates the bridge; throws with ip's message when this machine cannot (needs root). */
  start(): void {
    ip(['link', 'add', this.bridge, 'type', 'bridge']);
    ip(['addr', 'add', `${this.hostAddress}/16`, 'dev', this.bridge]);
    ip(['link', 'set', this.bridge, 'up']);
  }

  /** The stable IP of pod namespace/name (allocated on first use). */
  podIP(namespace: string, name: string): string {
    const key = `${namespace}/${name}`;
    let k = this.index.get(key);
    if (k === undefined) {
      k = this.index.size;
      if (k >= MAX_PODS) throw new Error(`the agent's pod network holds at most ${MAX_PODS} pods`);
      this.index.set(key, k);
    }
    return `10.${this.subnet}.${Math.floor(k / 250)}.${(k % 250) + 2}`;
  }

  private nsName(namespace: string, name: string): string {
    this.podIP(namespace, name);
    return `celer-${this.id}-${this.index.get(`${namespace}/${name}`)}`;
  }

  /**
   * Records the pod's DNS names (hostname.subdomain.namespace.svc, as a headless Service gives a
   * StatefulSet pod) and rewrites every namespace's hosts file when the set changed.
   */
  publish(namespace: string, name: string, hostname: string | undefined, subdomain: string | undefined): void {
    const key = `${namespace}/${name}`;
    const host = hostname ?? name;
    const names = subdomain === undefined || subdomain === ''
      ? [host]
      : [`${host}.${subdomain}.${namespace}.svc`, `${host}.${subdomain}.${namespace}.svc.cluster.local`, host];
    if (this.names.get(key)?.join(' ') === names.join(' ')) return;
    this.names.set(key, names);
    this.writeHosts();
  }

  private writeHosts(): void {
    const lines = ['127.0.0.1 localhost', '::1 localhost'];
    for (const [key, names] of this.names) {
      const [namespace, name] = key.split('/') as [string, string];
      lines.push(`${this.podIP(namespace, name)} ${names.join(' ')}`);
    }
    this.hostsText = lines.join('\n') + '\n';
    for (const ns of this.live.keys()) this.writeHostsOf(ns);
  }

  private writeHostsOf(ns: string): void {
    const file = path.join('/etc/netns', ns, 'hosts');
    mkdirSync(path.dirname(file), { recursive: true });
    // In place (truncate + write, same inode): a bind mount of the old file sees the new text.
    if (!existsSync(file) || readFileSync(file, 'utf8') !== this.hostsText) writeFileSync(file, this.hostsText);
  }

  /**
   * Creates (or recreates) the network namespace of pod `uid`; returns its name for `ip netns
   * exec`. A replacement pod of the same name takes the namespace over from the old one.
   */
  attach(namespace: string, name: string, uid: string): string {
    const ns = this.nsName(namespace, name);
    this.detachNs(ns);
    const podIP = this.podIP(namespace, name);
    const k = ns.slice(ns.lastIndexOf('-') + 1);
    // Interface names: at most 15 characters.
    const hostEnd = `vh${this.id}${k}`.slice(0, 15);
    const podEnd = `vp${this.id}${k}`.slice(0, 15);
    ip(['netns', 'add', ns]);
    this.live.set(ns, uid);
    ip(['link', 'add', hostEnd, 'type', 'veth', 'peer', 'name', podEnd]);
    ip(['link', 'set', podEnd, 'netns', ns]);
    ip(['link', 'set', hostEnd, 'master', this.bridge]);
    ip(['link', 'set', hostEnd, 'up']);
    ip(['-n', ns, 'link', 'set', 'lo', 'up']);
    ip(['-n', ns, 'addr', 'add', `${podIP}/16`, 'dev', podEnd]);
    ip(['-n', ns, 'link', 'set', podEnd, 'up']);
    ip(['-n', ns, 'route', 'add', 'default', 'via', this.hostAddress]);
    if (this.hostsText === '') this.writeHosts();
    this.writeHostsOf(ns);
    return ns;
  }

  /** Removes pod `uid`'s namespace (its veth goes with it), unless a replacement owns it now. */
  detach(namespace: string, name: string, uid: string): void {
    const ns = this.nsName(namespace, name);
    if (this.live.get(ns) === uid) this.detachNs(ns);
  }

  private detachNs(ns: string): void {
    try {
      ip(['netns', 'del', ns]);
    } catch {
      // not there
    }
    this.live.delete(ns);
    rmSync(path.join('/etc/netns', ns), { recursive: true, force: true });
  }

  /** Removes every namespace and the bridge. */
  stop(): void {
    for (const key of this.index.keys()) {
      const [namespace, name] = key.split('/') as [string, string];
      this.detachNs(this.nsName(namespace, name));
    }
    try {
      ip(['link', 'del', this.bridge]);
    } catch {
      // already gone
    }
  }
}
