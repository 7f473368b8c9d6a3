// clusterAddresses: which --peers entry a cluster node dials. Both pods of a StatefulSet get the
// same list (`<pod>.<headless>.<ns>.svc:7403` for each pod), so a node must recognise its own
// entry by its node id, not only by its own address (a pod's DNS name is not its IP).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterAddresses, type ClusterOptions } from './node.ts';
import { DEFAULT_TIMING } from '../cluster/timing.ts';

const both = 'orders-0.orders-nodes.prod.svc:7403,orders-1.orders-nodes.prod.svc:7403';

function options(nodeId: string, peers: string, advertise = '10.0.0.10'): ClusterOptions {
  return { nodeId, peers, advertise, s3: { bucket: 'b' }, timing: DEFAULT_TIMING };
}

test('each pod of a shared stable-DNS peer list dials the other pod, whichever entry comes first', () => {
  assert.equal(clusterAddresses(options('orders-0', both), '0.0.0.0:7400').peer, 'orders-1.orders-nodes.prod.svc:7403');
  assert.equal(clusterAddresses(options('orders-1', both, '10.0.0.11'), '0.0.0.0:7400').peer, 'orders-0.orders-nodes.prod.svc:7403');
});

test('an entry whose host is exactly the node id is this node; a longer name sharing the prefix is not', () => {
  assert.equal(clusterAddresses(options('orders-1', 'orders-1:7403,orders-0:7403'), '0.0.0.0:7400').peer, 'orders-0:7403');
  // "orders-10" begins with "orders-1" but not with "orders-1.": it is another node.
  assert.equal(clusterAddresses(options('orders-1', 'orders-1.x.svc:7403,orders-10.x.svc:7403'), '0.0.0.0:7400').peer, 'orders-10.x.svc:7403');
});

test('an entry naming this node by its own replication address is still skipped', () => {
  const a = clusterAddresses(options('a', '127.0.0.1:7503,127.0.0.1:7513', '127.0.0.1'), '127.0.0.1:7500');
  assert.equal(a.peer, '127.0.0.1:7513');
  assert.equal(a.replPort, 7503);
});

test('a list that names only this node is refused with the list in the message', () => {
  assert.throws(() => clusterAddresses(options('orders-0', 'orders-0.orders-nodes.prod.svc:7403'), '0.0.0.0:7400'), /--peers "orders-0\.orders-nodes\.prod\.svc:7403" names no node other than this one/);
});
