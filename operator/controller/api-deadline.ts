// A deadline on every Kubernetes API request the operator makes. @kubernetes/client-node sends
// requests with no timeout of its own, so a connection the apiserver (or a load balancer) stops
// answering hangs the caller for good: a reconcile worker stuck in an apply, or a leader-election
// renewal that never returns while another replica takes over. withRequestDeadline() returns a
// copy of a KubeConfig whose every request carries an AbortSignal that fires after the timeout,
// or earlier when `stop` aborts (the controller's stop(), so a deposed leader's calls in flight
// end at once). Watches are not affected: Watch sends with its own signal and connect/idle timer
// (kube-sources.ts bounds their setup).

import { KubeConfig } from '@kubernetes/client-node';
import { LEASE_DURATION_MS, RENEW_DEADLINE_MS } from './leader-election.ts';

/**
 * 4 s per request of the controller (apply, delete, patch status, events, lists, secrets):
 * renew deadline (10 s) + 4 s < lease duration (15 s), so a call issued just before the operator
 * lost its Lease has ended before another replica may take over. An apply of a StatefulSet answers
 * in well under a second on a healthy apiserver.
 */
export const KUBE_REQUEST_TIMEOUT_MS = 4_000;
if (!(RENEW_DEADLINE_MS + KUBE_REQUEST_TIMEOUT_MS < LEASE_DURATION_MS)) throw new Error('KUBE_REQUEST_TIMEOUT_MS breaks the leader-election bound');

type Authenticate = KubeConfig['applySecurityAuthentication'];

/** A copy of `kc` whose requests are aborted after `timeoutMs`, or when `stop` aborts. */
export function withRequestDeadline(kc: KubeConfig, timeoutMs: number, stop?: AbortSignal): KubeConfig {
  const copy = new KubeConfig();
  copy.loadFromOptions({ clusters: kc.clusters, users: kc.users, contexts: kc.contexts, currentContext: kc.getCurrentContext() });
  const authenticate: Authenticate = copy.applySecurityAuthentication.bind(copy);
  copy.applySecurityAuthentication = async (context) => {
    await authenticate(context);
    // An Error (not AbortSignal.timeout()'s DOMException, whose message client-node cannot
    // rewrite) so the log says what happened. The timer is unref'd and only holds this closure.
    const deadline = new AbortController();
    setTimeout(() => deadline.abort(new Error(
      `Kubernetes API request did not answer within ${timeoutMs} ms (code KubeApiTimeout); check the apiserver's health and the network path to it`,
    )), timeoutMs).unref();
    context.setSignal(stop === undefined ? deadline.signal : AbortSignal.any([deadline.signal, stop]));
  };
  return copy;
}
