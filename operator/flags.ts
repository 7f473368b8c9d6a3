// Command-line flags and environment variables of the operator. Flags win over the environment
// so a chart can set defaults in env and a developer can override them on the command line.

import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { DEFAULT_IMAGE } from './api/defaults.ts';
import { DEFAULT_NODE_URL_TEMPLATE } from './controller/node-client.ts';
import { ROLE_POLL_INTERVAL_MS, ROLE_POLL_TIMEOUT_MS } from './controller/role-watcher.ts';

export interface OperatorOptions {
  /** Path of a kubeconfig; null: in-cluster config, or the default kubeconfig outside a cluster. */
  kubeconfig: string | null;
  /** Namespace to watch; null: all namespaces. */
  namespace: string | null;
  metricsAddress: string;
  leaderElect: boolean;
  leaseName: string;
  leaseNamespace: string;
  identity: string;
  defaultImage: string;
  nodeUrlTemplate: string;
  /** How often two-node clusters' /status is polled for role changes (ms). */
  rolePollIntervalMs: number;
  help: boolean;
}

export const USAGE = `Usage: node operator/main.ts [flags]

  --kubeconfig PATH         kubeconfig to use (env KUBECONFIG); default: in-cluster config
                            inside a pod, else ~/.kube/config
  --namespace NS            namespace to watch (env WATCH_NAMESPACE); "" or "all": every namespace
  --metrics-address ADDR    host:port of /metrics and /healthz (env CELER_OPERATOR_METRICS_ADDRESS,
                            default :8080; :0 picks a free port)
  --leader-elect            elect a leader among operator replicas on a Lease
                            (env CELER_OPERATOR_LEADER_ELECT=true; default off)
  --lease-name NAME         the Lease for --leader-elect (default celer-operator)
  --lease-namespace NS      namespace of that Lease (env POD_NAMESPACE; default: --namespace or "default")
  --identity ID             this replica's name in the Lease (env POD_NAME; default host-pid)
  --default-image REPO      node image repository when spec.image is empty (env CELER_DEFAULT_IMAGE,
                            default ${DEFAULT_IMAGE})
  --node-url-template T     where a node's HTTP server is (env CELER_NODE_URL_TEMPLATE,
                            default ${DEFAULT_NODE_URL_TEMPLATE}); placeholders {podIP} {pod}
                            {namespace} {cluster} {ordinal} {service}
  --role-poll-interval-ms N how often each two-node cluster's pods are asked for their role, so the
                            client Service follows a failover (env CELER_OPERATOR_ROLE_POLL_INTERVAL_MS,
                            default ${ROLE_POLL_INTERVAL_MS}; at least ${ROLE_POLL_TIMEOUT_MS + 1}, the poll timeout + 1)
  --help                    print this
`;

function bool(v: string | undefined): boolean | undefined {
  if (v === undefined || v === '') return undefined;
  if (['1', 'true', 'yes', 'on'].includes(v.toLowerCase())) return true;
  if (['0', 'false', 'no', 'off'].includes(v.toLowerCase())) return false;
  throw new RangeError(`expected true or false, got "${v}"`);
}

export function parseFlags(argv: readonly string[], env: Readonly<Record<string, string | undefined>>): OperatorOptions {
  const { values } = parseArgs({
    args: [...argv],
    strict: true,
    options: {
      kubeconfig: { type: 'string' },
      namespace: { type: 'string' },
      'metrics-address': { type: 'string' },
      'leader-elect': { type: 'boolean' },
      'no-leader-elect': { type: 'boolean' },
      'lease-name': { type: 'string' },
      'lease-namespace': { type: 'string' },
      identity: { type: 'string' },
      'default-image': { type: 'string' },
      'node-url-template': { type: 'string' },
      'role-poll-interval-ms': { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  const ns = values.namespace ?? env.WATCH_NAMESPACE ?? '';
  const namespace = ns === '' || ns === 'all' ? null : ns;
  let leaderElect = bool(env.CELER_OPERATOR_LEADER_ELECT) ?? false;
  if (values['leader-elect'] === true) leaderElect = true;
  if (values['no-leader-elect'] === true) leaderElect = false;
  const kubeconfig = values.kubeconfig ?? env.KUBECONFIG ?? '';
  const pollText = values['role-poll-interval-ms'] ?? env.CELER_OPERATOR_ROLE_POLL_INTERVAL_MS ?? String(ROLE_POLL_INTERVAL_MS);
  const rolePollIntervalMs = Number(pollText);
  if (!Number.isInteger(rolePollIntervalMs) || rolePollIntervalMs <= ROLE_POLL_TIMEOUT_MS) {
    throw new RangeError(`--role-poll-interval-ms must be an integer above the poll timeout of ${ROLE_POLL_TIMEOUT_MS} ms, got "${pollText}"`);
  }
  return {
    kubeconfig: kubeconfig === '' ? null : kubeconfig,
    namespace,
    metricsAddress: values['metrics-address'] ?? env.CELER_OPERATOR_METRICS_ADDRESS ?? ':8080',
    leaderElect,
    leaseName: values['lease-name'] ?? 'celer-operator',
    leaseNamespace: values['lease-namespace'] ?? env.POD_NAMESPACE ?? namespace ?? 'default',
    identity: values.identity ?? env.POD_NAME ?? `${hostname()}-${process.pid}`,
    defaultImage: values['default-image'] ?? env.CELER_DEFAULT_IMAGE ?? DEFAULT_IMAGE,
    nodeUrlTemplate: values['node-url-template'] ?? env.CELER_NODE_URL_TEMPLATE ?? DEFAULT_NODE_URL_TEMPLATE,
    rolePollIntervalMs,
    help: values.help === true,
  };
}
