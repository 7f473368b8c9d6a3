// Pod status reporting: builds a pod's status from the agent's record of it (phase from the
// containers' states, podIP and hostIP, Initialized/Ready/ContainersReady/PodScheduled conditions
// with stable transition times, container statuses with restart counts and lastState) and patches
// it when it changed; and the final removal of a deleted pod once its processes are gone.
import { now, type AgentContext, type PodRun } from './context.ts';
import { Informer } from './informer.ts';
import { KubeError, resourcePath } from './kube.ts';
import type { ContainerStatus, Pod, PodCondition, PodStatus } from './types.ts';

/** Removes a deleted pod for good once its processes are gone (grace 0, uid precondition). */
export async function deletePod(ctx: AgentContext, pod: Pod): Promise<void> {
  try {
    await ctx.client.delete(resourcePath('v1', 'pods', pod.metadata.namespace, pod.metadata.name), {
      apiVersion: 'v1',
      kind: 'DeleteOptions',
      gracePeriodSeconds: 0,
      preconditions: { uid: pod.metadata.uid },
    });
    ctx.log(`pod ${Informer.key(pod)} removed`);
  } catch (err) {
    if (!(err instanceof KubeError && (err.status === 404 || err.status === 409))) ctx.log(`delete ${Informer.key(pod)}: ${(err as Error).message}`);
  }
}

/** Patches the pod's status (phase, IPs, conditions, container states) when it changed. */
export async function reportStatus(ctx: AgentContext, run: PodRun): Promise<void> {
  const pod = run.pod;
  const cs: ContainerStatus[] = run.containers.map((cr) => ({
    name: cr.spec.name,
    image: cr.spec.image,
    imageID: `celer-test-agent://${cr.spec.image}`,
    ...(cr.proc?.pid !== undefined ? { containerID: `celer-test-agent://${run.uid}/${cr.spec.name}/${cr.proc.pid}` } : {}),
    ready: cr.ready,
    started: cr.proc !== undefined && cr.started,
    restartCount: cr.restartCount,
    state: cr.state,
    lastState: cr.lastState,
  }));
  const allReady = run.containers.length > 0 && run.containers.every((c) => c.ready);
  const terminatedCodes = run.containers.map((c) => c.state.terminated?.exitCode);
  let phase: PodStatus['phase'] = 'Running';
  if (!run.initialized || run.containers.every((c) => c.state.waiting?.reason === 'ContainerCreating' || c.state.waiting?.reason === 'CreateContainerConfigError')) phase = 'Pending';
  if (terminatedCodes.every((c) => c !== undefined)) phase = terminatedCodes.every((c) => c === 0) ? 'Succeeded' : 'Failed';
  const cond = (type: string, ok: boolean, reason?: string): PodCondition => {
    const status = ok ? 'True' : 'False';
    const prev = run.conditionTimes.get(type);
    const time = prev !== undefined && prev.status === status ? prev.time : now();
    run.conditionTimes.set(type, { status, time });
    return { type, status, lastProbeTime: null, lastTransitionTime: time, ...(ok || reason === undefined ? {} : { reason }) };
  };
  const status: PodStatus = {
    phase,
    hostIP: run.hostIP,
    podIP: run.podIP,
    podIPs: [{ ip: run.podIP }],
    startTime: run.startTime,
    conditions: [
      cond('Initialized', run.initialized, 'ContainersNotInitialized'),
      cond('Ready', allReady, 'ContainersNotReady'),
      cond('ContainersReady', allReady, 'ContainersNotReady'),
      cond('PodScheduled', true),
    ],
    containerStatuses: cs,
  };
  const body = JSON.stringify(status);
  if (body === run.lastPatched) return;
  try {
    await ctx.client.patch(resourcePath('v1', 'pods', run.namespace, run.name, 'status'), { metadata: { uid: run.uid }, status });
    run.lastPatched = body;
  } catch (err) {
    if (!(err instanceof KubeError && (err.status === 404 || err.status === 409))) ctx.log(`status ${run.namespace}/${pod.metadata.name}: ${(err as Error).message}`);
  }
}
