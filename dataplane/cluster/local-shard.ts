// A ShardPort over a Shard in the same thread: what the simulator uses, and what a shard worker
// runs for the RPCs the main thread's cluster sends it (server/cluster-rpc.ts).
import type { Shard } from '../shard/shard.ts';
import type { ShardPort } from './ports.ts';

export function localShardPort(shard: Shard): ShardPort {
  return {
    id: shard.id,
    tip: () => Promise.resolve(shard.tip()),
    recordAt: (seq) => shard.recordAt(seq),
    readDurable: (from, to, maxBytes) => shard.readDurable(from, to, maxBytes),
    applyReplicated: async (records, commitTo) => {
      const durable = await shard.applyReplicated(records);
      if (commitTo !== undefined) shard.commitTo(commitTo);
      return durable;
    },
    commitTo: (seq) => Promise.resolve(shard.commitTo(seq)),
    becomeLeader: (epoch) => Promise.resolve(shard.becomeLeader(epoch)),
    becomeReplica: (epoch) => Promise.resolve(shard.becomeReplica(epoch)),
    quiesce: () => shard.quiesce(),
    truncateAfter: (seq) => shard.truncateAfter(seq),
  };
}
