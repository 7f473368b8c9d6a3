// The cluster's view of this node's shards (ShardPort, cluster/ports.ts) as RPCs to the shard
// worker threads that own them (shard/worker.ts ClusterRpc). Runs on the main thread.
import type { ShardPort, ShardTip } from '../cluster/ports.ts';
import { packRecords, unpackRecords } from '../cluster/records-pack.ts';
import type { Router } from './router.ts';

export function workerShardPorts(router: Router, numShards: number): ShardPort[] {
  const out: ShardPort[] = [];
  for (let id = 0; id < numShards; id++) {
    out.push({
      id,
      tip: async () => {
        const t = (await router.rpc(id, 'tip')) as ShardTip;
        return { ...t, tipHash: new Uint8Array(t.tipHash) };
      },
      recordAt: async (seq) => {
        const r = (await router.rpc(id, 'recordAt', [seq])) as { hash: Uint8Array; epoch: number } | null;
        return r === null ? null : { hash: new Uint8Array(r.hash), epoch: r.epoch };
      },
      readDurable: async (from, to, maxBytes) => unpackRecords((await router.rpc(id, 'readDurable', [from, to, maxBytes])) as ArrayBuffer),
      applyReplicated: async (records, commitTo) => {
        const buf = packRecords(records);
        return (await router.rpc(id, 'applyReplicated', [buf, commitTo], [buf])) as number;
      },
      commitTo: async (seq) => (await router.rpc(id, 'commitTo', [seq])) as number,
      becomeLeader: async (epoch) => void (await router.rpc(id, 'becomeLeader', [epoch])),
      becomeReplica: async (epoch) => void (await router.rpc(id, 'becomeReplica', [epoch])),
      quiesce: async () => void (await router.rpc(id, 'quiesce')),
      truncateAfter: async (seq) => void (await router.rpc(id, 'truncateAfter', [seq])),
    });
  }
  return out;
}
