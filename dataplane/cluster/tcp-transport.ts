// The replication link over TCP (PeerTransport, ports.ts). Each node listens on its replication
// address and dials the peer's, once per channel ('control' for heartbeats, 'data' for records),
// so a heartbeat never waits behind megabytes of records in one socket buffer. A node sends on
// the connections it dialed and receives on the ones it accepted. Dropped connections are
// redialled with backoff; a message sent while a channel is down is dropped (the protocol
// resends what matters).
//
// Frames: u32 length | body (messages.ts). The first frame on a dialed connection is a hello
// naming the channel and the dialer's node id.
import { createServer, connect, type Server, type Socket } from 'node:net';
import { lookup } from 'node:dns/promises';
import { decodeFrame, encodeFrame, FRAME_BYTES_MAX, FrameError, type ClusterMessage } from './messages.ts';
import type { Channel, PeerTransport } from './ports.ts';

/** Redial backoff. */
export const REDIAL_MS = { initial: 50, max: 1000 } as const;
/** Bytes a channel may hold unsent before the connection counts as stuck and is dropped. */
export const CHANNEL_QUEUE_BYTES_MAX = 256 * 1024 * 1024;
/** A dial that does not connect within this is abandoned and retried. */
export const DIAL_TIMEOUT_MS = 1000;

const CHANNELS: readonly Channel[] = ['control', 'data'];

export interface TcpTransportOptions {
  nodeId: string;
  /** Where to listen for the peer ("host:port"). */
  listen: string;
  /**
   * The peer's replication address: "host:port", or a DNS name (optionally ":port") resolving to
   * both nodes; then addresses of this node (`selfHosts`) are skipped.
   */
  peer: string;
  defaultPort: number;
  /** This node's own replication addresses ("host:port"): a DNS answer naming one is skipped. */
  selfAddresses: readonly string[];
  log: (msg: string) => void;
}

function splitHostPort(s: string, defaultPort: number): { host: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(s) ?? /^([^:]+)(?::(\d+))?$/.exec(s);
  if (m === null) throw new Error(`not a host or host:port: ${s}`);
  return { host: m[1]!, port: m[2] !== undefined ? Number(m[2]) : defaultPort };
}

export class TcpTransport implements PeerTransport {
  private readonly o: TcpTransportOptions;
  private server: Server | null = null;
  private readonly out = new Map<Channel, Socket | null>([['control', null], ['data', null]]);
  private readonly accepted = new Set<Socket>();
  private messageHandler: (ch: Channel, m: ClusterMessage) => void = () => {};
  private linkHandler: (ch: Channel, up: boolean) => void = () => {};
  private closed = false;
  private readonly timers = new Set<NodeJS.Timeout>();
  address = '';

  constructor(o: TcpTransportOptions) {
    this.o = o;
  }

  onMessage(h: (ch: Channel, m: ClusterMessage) => void): void {
    this.messageHandler = h;
  }
  onLinkChange(h: (ch: Channel, up: boolean) => void): void {
    this.linkHandler = h;
  }

  connected(ch: Channel): boolean {
    const s = this.out.get(ch);
    return s !== null && s !== undefined && !s.destroyed && !s.connecting;
  }

  queuedBytes(ch: Channel): number {
    return this.out.get(ch)?.writableLength ?? 0;
  }

  send(ch: Channel, m: ClusterMessage): boolean {
    const s = this.out.get(ch);
    if (s === null || s === undefined || s.destroyed || s.connecting) return false;
    if (s.writableLength > CHANNEL_QUEUE_BYTES_MAX) {
      this.o.log(`replication ${ch} link: ${s.writableLength} bytes unsent; dropping the connection`);
      s.destroy();
      return false;
    }
    // encodeFrame's output starts with the frame length.
    s.write(encodeFrame(m));
    return true;
  }

  async start(): Promise<string> {
    const { host, port } = splitHostPort(this.o.listen, this.o.defaultPort);
    this.server = createServer((sock) => this.accept(sock));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => {
        this.server!.off('error', reject);
        resolve();
      });
    });
    const a = this.server.address() as { port: number };
    this.address = `${host}:${a.port}`;
    for (const ch of CHANNELS) void this.dial(ch, REDIAL_MS.initial);
    return this.address;
  }

  private async resolvePeer(): Promise<{ host: string; port: number }> {
    const { host, port } = splitHostPort(this.o.peer, this.o.defaultPort);
    const all = await lookup(host, { all: true });
    const other = all.find((a) => !this.o.selfAddresses.includes(`${a.address}:${port}`));
    if (other === undefined) throw new Error(`${host} resolves only to this node (${all.map((a) => a.address).join(', ')})`);
    return { host: other.address, port };
  }

  private later(ms: number, f: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      f();
    }, ms);
    this.timers.add(t);
  }

  private async dial(ch: Channel, backoff: number): Promise<void> {
    if (this.closed) return;
    let target: { host: string; port: number };
    try {
      target = await this.resolvePeer();
    } catch {
      this.later(backoff, () => void this.dial(ch, Math.min(REDIAL_MS.max, backoff * 2)));
      return;
    }
    const s = connect({ host: target.host, port: target.port, noDelay: true });
    s.setKeepAlive(true, 1000);
    s.setTimeout(DIAL_TIMEOUT_MS, () => {
      if (s.connecting) s.destroy();
    });
    let up = false;
    s.once('connect', () => {
      s.setTimeout(0);
      up = true;
      this.out.set(ch, s);
      const hello = new TextEncoder().encode(JSON.stringify({ hello: ch, from: this.o.nodeId }));
      const len = Buffer.allocUnsafe(4);
      len.writeUInt32BE(hello.length);
      s.write(len);
      s.write(hello);
      this.linkHandler(ch, true);
    });
    s.on('data', () => {}); // the peer never writes on a connection we dialed
    s.on('error', () => {});
    s.once('close', () => {
      if (this.out.get(ch) === s) this.out.set(ch, null);
      if (up) this.linkHandler(ch, false);
      if (!this.closed) this.later(up ? REDIAL_MS.initial : backoff, () => void this.dial(ch, up ? REDIAL_MS.initial : Math.min(REDIAL_MS.max, backoff * 2)));
    });
  }

  private accept(sock: Socket): void {
    this.accepted.add(sock);
    sock.setNoDelay(true);
    // Chunks are gathered until a whole frame is there, then joined once (never per chunk).
    let chunks: Buffer[] = [];
    let have = 0;
    let need = 4;
    let inBody = false;
    let channel: Channel | null = null;
    const take = (n: number): Buffer => {
      const all = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, have);
      const head = all.subarray(0, n);
      const rest = all.subarray(n);
      chunks = rest.length > 0 ? [rest] : [];
      have = rest.length;
      return head;
    };
    sock.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      have += chunk.length;
      while (have >= need) {
        if (!inBody) {
          const len = take(4).readUInt32BE(0);
          if (len === 0 || len > FRAME_BYTES_MAX) {
            this.o.log(`replication link: a ${len}-byte frame is outside 1..${FRAME_BYTES_MAX}; closing the connection`);
            sock.destroy();
            return;
          }
          need = len;
          inBody = true;
          continue;
        }
        // A copy the shard may keep (the joined buffer may be a pooled slice).
        const body = new Uint8Array(take(need));
        need = 4;
        inBody = false;
        if (channel === null) {
          try {
            const h = JSON.parse(new TextDecoder().decode(body)) as { hello?: string };
            if (h.hello !== 'control' && h.hello !== 'data') throw new Error('no channel');
            channel = h.hello;
          } catch {
            this.o.log('replication link: a connection did not start with a hello; closing it');
            sock.destroy();
            return;
          }
          continue;
        }
        let m: ClusterMessage;
        try {
          m = decodeFrame(body);
        } catch (e) {
          if (!(e instanceof FrameError)) throw e;
          this.o.log(`replication link: ${e.message}; closing the connection`);
          sock.destroy();
          return;
        }
        this.messageHandler(channel, m);
      }
    });
    sock.on('error', () => {});
    sock.once('close', () => this.accepted.delete(sock));
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.timers) clearTimeout(t);
    for (const s of this.out.values()) s?.destroy();
    for (const s of this.accepted) s.destroy();
    await new Promise<void>((r) => (this.server ? this.server.close(() => r()) : r()));
  }
}
