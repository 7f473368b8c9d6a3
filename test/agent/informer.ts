// List-then-watch cache of one collection, re-listing when the watch ends with an error (e.g.
// 410 Gone after compaction) or fails. The agent is level-triggered: every change just calls
// onChange(), and the agent re-reads the whole store.
import { KubeClient, type KubeObject } from './kube.ts';

export class Informer<T extends KubeObject> {
  readonly store = new Map<string, T>();
  private readonly client: KubeClient;
  private readonly path: string;
  private readonly onChange: () => void;
  private readonly log: (msg: string) => void;
  private resourceVersion = '';
  private stopped = false;
  private abortWatch: () => void = () => {};
  private loopDone: Promise<void> = Promise.resolve();

  constructor(client: KubeClient, path: string, onChange: () => void, log: (msg: string) => void) {
    this.client = client;
    this.path = path;
    this.onChange = onChange;
    this.log = log;
  }

  static key(o: KubeObject): string {
    return `${o.metadata.namespace ?? ''}/${o.metadata.name}`;
  }

  /** Resolves after the first list; the watch then runs until stop(). */
  async start(): Promise<void> {
    await this.relist();
    this.loopDone = this.loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.abortWatch();
    await this.loopDone;
  }

  private async relist(): Promise<void> {
    const list = await this.client.list<T>(this.path);
    this.store.clear();
    for (const item of list.items) this.store.set(Informer.key(item), item);
    this.resourceVersion = list.metadata.resourceVersion;
    this.onChange();
  }

  private async loop(): Promise<void> {
    while (!this.stopped) {
      let expired = false;
      try {
        const w = this.client.watch<T>(this.path, this.resourceVersion, (ev) => {
          if (ev.type === 'ERROR') {
            expired = true;
            return;
          }
          if (ev.object.metadata.resourceVersion !== undefined) this.resourceVersion = ev.object.metadata.resourceVersion;
          if (ev.type === 'BOOKMARK') return;
          if (ev.type === 'DELETED') this.store.delete(Informer.key(ev.object));
          else this.store.set(Informer.key(ev.object), ev.object);
          this.onChange();
        });
        this.abortWatch = w.abort;
        await w.done;
        if (expired && !this.stopped) await this.relist();
      } catch (err) {
        if (this.stopped) break;
        this.log(`watch ${this.path}: ${(err as Error).message}; re-listing`);
        await new Promise((r) => setTimeout(r, 500));
        try {
          await this.relist();
        } catch (err2) {
          this.log(`list ${this.path}: ${(err2 as Error).message}`);
        }
      }
    }
  }
}
