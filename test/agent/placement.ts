// The agent's scheduler and volume provisioner: gives each pending PVC a PersistentVolume and a
// directory (agent/volumes/<ns>/<claim>, kept across pod restarts like a local PV), releases and
// deletes both when the claim goes, binds unscheduled pods to a virtual node (test/agent/schedule.ts)
// once their claims are bound, and marks the pods it cannot place Unschedulable.
import { mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { AGENT_LABEL, now, type AgentContext } from './context.ts';
import { Informer } from './informer.ts';
import { KubeError, resourcePath } from './kube.ts';
import { schedule, type VirtualNode } from './schedule.ts';
import type { PersistentVolumeClaim, Pod } from './types.ts';

/** The local directory backing PVC `claim` of `namespace` under the agent's work directory. */
export function volumeDir(workDir: string, namespace: string, claim: string): string {
  return path.join(workDir, 'volumes', namespace, claim);
}

export class Placement {
  private readonly ctx: AgentContext;
  private readonly nodes: VirtualNode[];
  private readonly claims: () => PersistentVolumeClaim[];
  private readonly boundUids = new Set<string>();
  private readonly unschedulableMsg = new Map<string, string>();
  private readonly provisioned = new Map<string, { pv: string; dir: string }>();

  constructor(ctx: AgentContext, nodes: VirtualNode[], claims: () => PersistentVolumeClaim[]) {
    this.ctx = ctx;
    this.nodes = nodes;
    this.claims = claims;
  }

  /** Provisions every pending claim, and removes the PV and directory of every claim that is gone. */
  async reconcileClaims(): Promise<void> {
    const claims = this.claims();
    for (const pvc of claims) {
      if (pvc.metadata.deletionTimestamp === undefined && pvc.status?.phase !== 'Bound' && !this.provisioned.has(pvc.metadata.uid ?? '')) {
        await this.provision(pvc).catch((err: Error) => this.ctx.log(`provision ${Informer.key(pvc)}: ${err.message}`));
      }
    }
    const claimUids = new Set(claims.map((c) => c.metadata.uid));
    for (const [uid, pv] of this.provisioned) {
      if (claimUids.has(uid)) continue;
      this.provisioned.delete(uid);
      this.ctx.log(`claim ${uid} gone: deleting ${pv.pv} and ${pv.dir}`);
      // The PV protection finalizer holds a PV while its phase is Bound; the PV binder that would
      // mark it Released is not running (the agent binds instead), so the agent does it.
      const pvPath = resourcePath('v1', 'persistentvolumes', undefined, pv.pv);
      await this.ctx.client.patch(`${pvPath}/status`, { status: { phase: 'Released' } }).catch(() => undefined);
      await this.ctx.client.delete(pvPath).catch(() => undefined);
      rmSync(pv.dir, { recursive: true, force: true });
    }
  }

  /** Binds every pod of `pods` that has no node yet (and is not being deleted). */
  async bindPending(pods: Pod[]): Promise<void> {
    for (const pod of pods) {
      if (pod.spec.nodeName !== undefined || pod.metadata.deletionTimestamp !== undefined || this.boundUids.has(pod.metadata.uid ?? '')) continue;
      await this.bind(pod, pods).catch((err: Error) => this.ctx.log(`bind ${Informer.key(pod)}: ${err.message}`));
    }
  }

  private async provision(pvc: PersistentVolumeClaim): Promise<void> {
    const ns = pvc.metadata.namespace ?? 'default';
    const uid = pvc.metadata.uid ?? '';
    const dir = volumeDir(this.ctx.workDir, ns, pvc.metadata.name);
    mkdirSync(dir, { recursive: true });
    const pvName = `pvc-${uid}`;
    const storage = pvc.spec.resources?.requests?.storage ?? '1Gi';
    const accessModes = pvc.spec.accessModes ?? ['ReadWriteOnce'];
    try {
      await this.ctx.client.create(resourcePath('v1', 'persistentvolumes'), {
        apiVersion: 'v1',
        kind: 'PersistentVolume',
        metadata: { name: pvName, labels: { [AGENT_LABEL]: 'true' }, annotations: { 'pv.kubernetes.io/provisioned-by': 'celer-test-agent' } },
        spec: {
          capacity: { storage },
          accessModes,
          persistentVolumeReclaimPolicy: 'Delete',
          storageClassName: pvc.spec.storageClassName ?? '',
          volumeMode: pvc.spec.volumeMode ?? 'Filesystem',
          hostPath: { path: dir, type: 'DirectoryOrCreate' },
          claimRef: { apiVersion: 'v1', kind: 'PersistentVolumeClaim', namespace: ns, name: pvc.metadata.name, uid },
        },
      });
    } catch (err) {
      if (!(err instanceof KubeError && err.status === 409)) throw err;
    }
    this.provisioned.set(uid, { pv: pvName, dir });
    await this.ctx.client.patch(resourcePath('v1', 'persistentvolumes', undefined, pvName, 'status'), { status: { phase: 'Bound' } });
    const claimPath = resourcePath('v1', 'persistentvolumeclaims', ns, pvc.metadata.name);
    await this.ctx.client.patch(claimPath, {
      metadata: { uid, annotations: { 'pv.kubernetes.io/bind-completed': 'yes', 'pv.kubernetes.io/bound-by-controller': 'yes' } },
      spec: { volumeName: pvName },
    });
    await this.ctx.client.patch(`${claimPath}/status`, { metadata: { uid }, status: { phase: 'Bound', accessModes, capacity: { storage } } });
    this.ctx.log(`claim ${ns}/${pvc.metadata.name} bound to ${pvName} (${dir})`);
  }

  private async bind(pod: Pod, pods: Pod[]): Promise<void> {
    const ns = pod.metadata.namespace ?? 'default';
    const key = Informer.key(pod);
    for (const v of pod.spec.volumes ?? []) {
      const claim = v.persistentVolumeClaim?.claimName;
      if (claim === undefined) continue;
      const pvc = this.claims().find((c) => c.metadata.namespace === ns && c.metadata.name === claim);
      if (pvc === undefined || (pvc.status?.phase !== 'Bound' && !this.provisioned.has(pvc.metadata.uid ?? ''))) {
        await this.markUnschedulable(pod, `persistentvolumeclaim "${claim}" not found or not bound`);
        return;
      }
    }
    const result = schedule(pod, this.nodes, pods.filter((p) => p.spec.nodeName !== undefined || this.boundUids.has(p.metadata.uid ?? '')));
    if ('unschedulable' in result) {
      await this.markUnschedulable(pod, result.unschedulable);
      return;
    }
    await this.ctx.client.create(resourcePath('v1', 'pods', ns, pod.metadata.name, 'binding'), {
      apiVersion: 'v1',
      kind: 'Binding',
      metadata: { name: pod.metadata.name, namespace: ns, uid: pod.metadata.uid },
      target: { apiVersion: 'v1', kind: 'Node', name: result.node },
    });
    this.boundUids.add(pod.metadata.uid ?? '');
    // Pods scheduled against this one must see it on its node before the watch catches up.
    pod.spec.nodeName = result.node;
    this.unschedulableMsg.delete(pod.metadata.uid ?? '');
    this.ctx.log(`pod ${key} bound to ${result.node}`);
  }

  private async markUnschedulable(pod: Pod, message: string): Promise<void> {
    const uid = pod.metadata.uid ?? '';
    if (this.unschedulableMsg.get(uid) === message) return;
    this.unschedulableMsg.set(uid, message);
    this.ctx.log(`pod ${Informer.key(pod)} unschedulable: ${message}`);
    await this.ctx.client.patch(resourcePath('v1', 'pods', pod.metadata.namespace, pod.metadata.name, 'status'), {
      metadata: { uid },
      status: {
        phase: 'Pending',
        conditions: [{ type: 'PodScheduled', status: 'False', reason: 'Unschedulable', message, lastTransitionTime: now(), lastProbeTime: null }],
      },
    });
  }
}
