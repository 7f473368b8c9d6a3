// Names shared by the CRD, the operator, the chart and the nodes. Changing one of these is a
// breaking change for clusters that already exist: labels select pods, the finalizer guards
// deletion and the field manager owns fields on every object the operator applies.

export const GROUP = 'celer.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;
export const KIND = 'CelerCluster';
export const PLURAL = 'celerclusters';

/** The server-side apply field manager for every object the operator writes. */
export const FIELD_MANAGER = 'celer-operator';

/** Set on the CelerCluster only while external cleanup (S3 lease objects) is still owed. */
export const FINALIZER = 'celer.io/s3-cleanup';

export const LABEL_NAME = 'app.kubernetes.io/name';
export const LABEL_INSTANCE = 'app.kubernetes.io/instance';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const LABEL_COMPONENT = 'app.kubernetes.io/component';
/** The cluster a pod belongs to; every owned object carries it, informers select on it. */
export const LABEL_CLUSTER = 'celer.io/cluster';
/** Maintained by the operator from each node's /status; the client Service selects `leader`. */
export const LABEL_ROLE = 'celer.io/role';
export const ROLE_LEADER = 'leader';

/** `"true"` stops every write the operator makes for that cluster (status aside). */
export const ANNOTATION_PAUSED = 'celer.io/paused';
/** With upgradePolicy supervised: set to status.upgrade.targetRevision to let the switchover run. */
export const ANNOTATION_APPROVE_UPGRADE = 'celer.io/approve-upgrade';
/** On the pod template: hash of the desired template; a pod whose value differs is outdated. */
export const ANNOTATION_TEMPLATE_HASH = 'celer.io/template-hash';
/** The StatefulSet label Kubernetes puts on each pod: `<statefulset>-<ordinal>`. */
export const LABEL_POD_NAME = 'statefulset.kubernetes.io/pod-name';

/** Ports a node listens on (SPEC §8: client protocol and the HTTP status/metrics server). */
export const PORT_CLIENT = 7400;
export const PORT_HTTP = 7401;
/** gRPC front end: the node's default, client port + 2. */
export const PORT_GRPC = 7402;
/** Node-to-node replication: the node's default, client port + 3 (dataplane REPLICATION_PORT_OFFSET). */
export const PORT_REPLICATION = 7403;
export const DATA_DIR = '/var/lib/celer';
export const CONFIG_DIR = '/etc/celer';
export const VOLUME_DATA = 'data';

/**
 * Objects under the cluster's S3 prefix that hold leadership state. With deletionPolicy Delete
 * the operator removes them when the CelerCluster is deleted, so a new cluster with the same
 * bucket and prefix starts at a fresh epoch. The data plane writes these keys (dataplane/cluster/
 * lease.ts LEASE_KEY, identity.ts IDENTITY_KEY, fallback.ts FALLBACK_PREFIX); keep in step. A key ending in '/' stands for
 * every object under it (the S3 fallback batches); nothing else under the prefix is touched.
 */
export const S3_LEASE_OBJECT_KEYS: readonly string[] = ['cluster/lease.json', 'cluster/identity.json', 'cluster/fallback/'];
