// A real Prometheus (Debian's package, hack/prometheus.sh) for the monitoring suites, running the
// chart's scrape jobs (charts/celer-operator/files/prometheus-scrape-config.yaml) with their
// relabel rules unchanged. Debian's build has no Kubernetes discovery, so each
// `kubernetes_sd_configs` (role pod) becomes an `http_sd_configs` on test/agent/pod-sd.ts, which
// serves pods with the same __meta_kubernetes_pod_* labels. Intervals are cut short; rule files
// (files/alerts.yaml) can be loaded as shipped. Used by kube-prometheus.test.ts (pods of a real
// apiserver) and cluster-prometheus.test.ts (pods built like the operator's for a local cluster).
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { SCRAPE_CONFIG_FILE } from '../../lib/monitoring.ts';
import { background, freePort, prometheusPath, waitFor, type Background } from '../kube-env.ts';

/** Longest wait for Prometheus' /-/ready after start (cold TSDB on a busy machine). */
const READY_TIMEOUT_MS = 60_000;
/** One HTTP API call. */
const API_TIMEOUT_MS = 10_000;

interface ScrapeConfig {
  job_name: string;
  scrape_interval?: string;
  scrape_timeout?: string;
  kubernetes_sd_configs?: Record<string, unknown>[];
  http_sd_configs?: Record<string, unknown>[];
}

export interface Target {
  labels: Record<string, string>;
  scrapePool: string;
  scrapeUrl: string;
  health: string;
  lastError: string;
}

export interface Sample {
  metric: Record<string, string>;
  value: [number, string];
}

export interface PrometheusOptions {
  dir: string;
  /** The HTTP-SD endpoint that stands in for Kubernetes pod discovery. */
  sdUrl: string;
  /** Scrape, evaluation and SD refresh interval in seconds. */
  intervalS: number;
  ruleFiles?: string[];
}

/**
 * The chart's scrape jobs with their relabel_configs unchanged, discovery through `sdUrl`, every
 * interval `intervalS`. Returns the config file and the job names.
 */
export function renderScrapeConfig(o: PrometheusOptions): { file: string; jobs: string[] } {
  const chartConfig = parse(readFileSync(SCRAPE_CONFIG_FILE, 'utf8')) as { scrape_configs: ScrapeConfig[] };
  const interval = `${o.intervalS}s`;
  for (const job of chartConfig.scrape_configs) {
    job.scrape_interval = interval;
    job.scrape_timeout = `${Math.max(1, Math.floor(o.intervalS / 2))}s`;
    const sds = job.kubernetes_sd_configs ?? [];
    assert.ok(sds.length > 0, `job ${job.job_name} discovers its targets through Kubernetes`);
    for (const sd of sds) assert.equal(sd.role, 'pod', `job ${job.job_name}: only role pod has a stand-in`);
    delete job.kubernetes_sd_configs;
    job.http_sd_configs = [{ url: o.sdUrl, refresh_interval: interval }];
  }
  const file = path.join(o.dir, 'prometheus.yml');
  writeFileSync(file, stringify({
    global: { scrape_interval: interval, evaluation_interval: interval },
    ...(o.ruleFiles !== undefined ? { rule_files: o.ruleFiles } : {}),
    scrape_configs: chartConfig.scrape_configs,
  }));
  return { file, jobs: chartConfig.scrape_configs.map((j) => j.job_name) };
}

export class Prometheus {
  readonly url: string;
  readonly jobs: string[];
  private readonly proc: Background;

  private constructor(url: string, jobs: string[], proc: Background) {
    this.url = url;
    this.jobs = jobs;
    this.proc = proc;
  }

  /** Renders the config, starts Prometheus on a free port and waits until it is ready. */
  static async start(o: PrometheusOptions): Promise<Prometheus> {
    mkdirSync(o.dir, { recursive: true });
    const bin = await prometheusPath();
    const port = await freePort();
    const { file, jobs } = renderScrapeConfig(o);
    const proc = background(
      bin,
      [`--config.file=${file}`, `--storage.tsdb.path=${path.join(o.dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'],
      path.join(o.dir, 'prometheus.log'),
    );
    const p = new Prometheus(`http://127.0.0.1:${port}`, jobs, proc);
    await waitFor('Prometheus ready', async () => {
      if (proc.proc.exitCode !== null) throw new Error(`prometheus exited with ${proc.proc.exitCode}`);
      return (await fetch(`${p.url}/-/ready`)).status === 200;
    }, READY_TIMEOUT_MS).catch(async (err: Error) => {
      await proc.stop();
      throw new Error(`${err.message}\n${proc.output()}`);
    });
    return p;
  }

  /** The last lines of Prometheus' log. */
  output(lines = 20): string {
    return this.proc.output(lines);
  }

  stop(): Promise<void> {
    return this.proc.stop();
  }

  /** GET of an HTTP API path; throws with Prometheus' error text unless status is success. */
  async get<T>(pathAndQuery: string): Promise<T> {
    const res = await fetch(`${this.url}${pathAndQuery}`, { signal: AbortSignal.timeout(API_TIMEOUT_MS) });
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== 'success') throw new Error(`${pathAndQuery}: ${body.error ?? res.status}`);
    return body.data;
  }

  /** An instant query; the result vector (a scalar result is returned as one unlabelled sample). */
  async query(q: string): Promise<Sample[]> {
    const data = await this.get<{ resultType: string; result: Sample[] | [number, string] }>(`/api/v1/query?query=${encodeURIComponent(q)}`);
    if (data.resultType === 'scalar') return [{ metric: {}, value: data.result as [number, string] }];
    return data.result as Sample[];
  }

  async targets(): Promise<Target[]> {
    return (await this.get<{ activeTargets: Target[] }>('/api/v1/targets?state=active')).activeTargets;
  }

  /** The values of `label` over the series matching `match` (what Grafana's label_values asks). */
  async labelValues(label: string, match: string): Promise<string[]> {
    return this.get<string[]>(`/api/v1/label/${encodeURIComponent(label)}/values?match[]=${encodeURIComponent(match)}`);
  }

  /** The state of one alerting rule (inactive, pending, firing) and its active alerts' labels. */
  async alert(name: string): Promise<{ state: string; alerts: Record<string, string>[] }> {
    const data = await this.get<{ groups: { rules: { name: string; type: string; state?: string; alerts?: { labels: Record<string, string> }[] }[] }[] }>('/api/v1/rules?type=alert');
    const rule = data.groups.flatMap((g) => g.rules).find((r) => r.name === name);
    if (rule === undefined) throw new Error(`no alerting rule ${name} is loaded`);
    return { state: rule.state ?? 'unknown', alerts: (rule.alerts ?? []).map((a) => a.labels) };
  }
}
