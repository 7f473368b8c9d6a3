// Entry point of the Celer operator: `node operator/main.ts [flags]` (see flags.ts or --help).
// Serves /metrics and /healthz at once, then runs the controller: straight away, or only while
// it holds the leader-election Lease. Losing the Lease (including a renewal that hangs past the
// renew deadline) stops the controller, which aborts its requests in flight, and exits the
// process (the Deployment restarts it as a candidate): a controller that may be out of date must
// not act.

import { KubeConfig } from '@kubernetes/client-node';
import { systemClock } from './controller/clock.ts';
import { Controller } from './controller/controller.ts';
import { describe } from './controller/executor.ts';
import { kubeLeaseApi } from './controller/kube-lease.ts';
import { LEASE_REQUEST_TIMEOUT_MS, LeaderElector } from './controller/leader-election.ts';
import { withRequestDeadline } from './controller/api-deadline.ts';
import { parseFlags, USAGE } from './flags.ts';
import { jsonLogger } from './log.ts';
import { OperatorMetrics, serveMetrics } from './metrics.ts';

function loadKubeConfig(path: string | null): KubeConfig {
  const kc = new KubeConfig();
  if (path !== null) kc.loadFromFile(path);
  else if (process.env.KUBERNETES_SERVICE_HOST !== undefined) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc;
}

async function main(): Promise<void> {
  const options = parseFlags(process.argv.slice(2), process.env);
  if (options.help) {
    process.stdout.write(USAGE);
    return;
  }
  const log = jsonLogger();
  const kc = loadKubeConfig(options.kubeconfig);
  const metrics = new OperatorMetrics();
  const controller = new Controller({
    kc, namespace: options.namespace, clock: systemClock, metrics, log, identity: options.identity,
    defaultImage: options.defaultImage, nodeUrlTemplate: options.nodeUrlTemplate, rolePollIntervalMs: options.rolePollIntervalMs,
  });
  const server = await serveMetrics(metrics, options.metricsAddress, controller);
  const address = server.address();
  log.info('metrics listening', { address: typeof address === 'object' && address !== null ? `${address.address}:${address.port}` : String(address) });

  let elector: LeaderElector | null = null;
  let shuttingDown = false;
  const shutdown = async (signal: string): Promise<void> => {
    shuttingDown = true;
    log.info('shutting down', { signal });
    controller.stop();
    await elector?.stop();
    server.close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  process.once('SIGINT', () => void shutdown('SIGINT'));

  if (!options.leaderElect) {
    metrics.isLeader.set(1);
    await controller.start();
    return;
  }
  elector = new LeaderElector({
    // Its own deadline (not the controller's stop signal): the release on shutdown must still go out.
    api: kubeLeaseApi(withRequestDeadline(kc, LEASE_REQUEST_TIMEOUT_MS), options.leaseNamespace, options.leaseName),
    identity: options.identity,
    clock: systemClock,
    onStartedLeading: () => {
      log.info('became leader', { lease: `${options.leaseNamespace}/${options.leaseName}`, identity: options.identity });
      metrics.isLeader.set(1);
      void controller.start();
    },
    onStoppedLeading: () => {
      metrics.isLeader.set(0);
      if (shuttingDown) return;
      log.error('lost the leader-election Lease; exiting so a fresh candidate takes over');
      controller.stop();
      process.exit(1);
    },
    onError: (err) => {
      metrics.errors.labels('leader_election').inc();
      log.warn('leader election error', { error: describe(err) });
    },
  });
  log.info('campaigning for leadership', { lease: `${options.leaseNamespace}/${options.leaseName}`, identity: options.identity });
  elector.start();
}

main().catch((err: unknown) => {
  process.stderr.write(`celer-operator: ${describe(err)}\n`);
  process.exit(1);
});
