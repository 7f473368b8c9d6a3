// The chart's monitoring assets as data, for the tests that check them: the Grafana dashboard's
// panel queries (charts/celer-operator/files/dashboard.json), the alert rules (files/alerts.yaml),
// the metric names a PromQL expression uses, and every metric name the node and the operator
// export (read from their prom-client registries, not from a list kept by hand).
// Used by charts/monitoring.test.ts (unit) and the Prometheus e2e suites, which evaluate the same
// queries against a real Prometheus.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import type { Registry } from 'prom-client';

const chartFiles = fileURLToPath(new URL('../../charts/celer-operator/files/', import.meta.url));
export const DASHBOARD_FILE = `${chartFiles}dashboard.json`;
export const ALERTS_FILE = `${chartFiles}alerts.yaml`;
export const SCRAPE_CONFIG_FILE = `${chartFiles}prometheus-scrape-config.yaml`;

export interface PanelTarget {
  refId: string;
  expr: string;
  legendFormat?: string;
}

export interface Panel {
  id: number;
  type: string;
  title: string;
  targets?: PanelTarget[];
  /** A row's panels (Grafana keeps them here while the row is collapsed). */
  panels?: Panel[];
}

export interface Dashboard {
  templating: { list: { name: string; type: string; query: string }[] };
  panels: Panel[];
}

export interface AlertRule {
  alert: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

export interface RuleFile {
  groups: { name: string; rules: AlertRule[] }[];
}

/** One query of one panel, as the checks name it. */
export interface PanelQuery {
  panel: string;
  refId: string;
  expr: string;
}

export function loadDashboard(text: string = readFileSync(DASHBOARD_FILE, 'utf8')): Dashboard {
  return JSON.parse(text) as Dashboard;
}

export function loadRules(text: string = readFileSync(ALERTS_FILE, 'utf8')): RuleFile {
  return parse(text) as RuleFile;
}

/** Every panel that shows data (rows excluded, panels inside collapsed rows included). */
export function dataPanels(d: Dashboard): Panel[] {
  const out: Panel[] = [];
  const walk = (ps: Panel[]): void => {
    for (const p of ps) {
      if (p.type === 'row') walk(p.panels ?? []);
      else out.push(p);
    }
  };
  walk(d.panels);
  return out;
}

export function panelQueries(d: Dashboard): PanelQuery[] {
  return dataPanels(d).flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title, refId: t.refId, expr: t.expr })));
}

export function alertRule(rules: RuleFile, name: string): AlertRule | undefined {
  return rules.groups.flatMap((g) => g.rules).find((r) => r.alert === name);
}

/** PromQL words that look like identifiers but are not metric names. */
const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'offset', 'inf', 'nan']);

/**
 * The metric names a PromQL expression selects. A small tokenizer, enough for the expressions
 * of the dashboard and the rules: strings, label matchers, range and subquery brackets and
 * grouping label lists are removed; what remains is a metric name when it is an identifier that
 * is not a keyword, not part of a number and not a function or aggregation (followed by '(').
 */
export function metricNames(expr: string): string[] {
  let s = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
  s = s.replace(/\{[^}]*\}/g, ' ');
  s = s.replace(/\[[^\]]*\]/g, ' ');
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  s = s.replace(/\boffset\s+-?[0-9a-zA-Z]+/g, ' ');
  const names = new Set<string>();
  for (const m of s.matchAll(/[A-Za-z_:][A-Za-z0-9_:]*/g)) {
    const before = s[m.index - 1] ?? ' ';
    if (/[0-9.]/.test(before)) continue; // the exponent of 1e3
    if (KEYWORDS.has(m[0].toLowerCase())) continue;
    if (s.slice(m.index + m[0].length).trimStart().startsWith('(')) continue;
    names.add(m[0]);
  }
  return [...names];
}

/** The metric a Grafana `label_values(metric{…}, label)` variable query reads. */
export function variableMetricNames(query: string): string[] {
  const m = /^\s*label_values\(\s*(.+),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*$/.exec(query);
  return m === null ? [] : metricNames(m[1]!);
}

/** Series Prometheus itself adds to every scrape target that the assets may use. */
export const PROMETHEUS_SERIES: readonly string[] = ['up'];

async function namesOf(registry: Registry): Promise<string[]> {
  const out: string[] = [];
  for (const m of await registry.getMetricsAsJSON()) {
    const type = String(m.type);
    if (type === 'histogram') out.push(`${m.name}_bucket`, `${m.name}_sum`, `${m.name}_count`);
    else if (type === 'summary') out.push(m.name, `${m.name}_sum`, `${m.name}_count`);
    else out.push(m.name);
  }
  return out;
}

/**
 * Every series name the node's /metrics and the operator's /metrics can carry: the node's
 * registry with every lazily made metric forced into being (cluster counters, S3 requests,
 * cache gauges), and a fresh operator registry. Plus PROMETHEUS_SERIES.
 */
export async function exportedMetricNames(): Promise<Set<string>> {
  const { metricsRegistry, setCacheUsage } = await import('../../dataplane/server/metrics.ts');
  const { registerClusterMetrics } = await import('../../dataplane/server/cluster-metrics.ts');
  const { OperatorMetrics } = await import('../../operator/metrics.ts');
  registerClusterMetrics(() => null);
  setCacheUsage(0, {});
  return new Set([...(await namesOf(metricsRegistry())), ...(await namesOf(new OperatorMetrics().registry)), ...PROMETHEUS_SERIES]);
}

/** The names in `exprs` that neither the node nor the operator exports, as "where: name". */
export function unknownMetrics(queries: { where: string; expr: string }[], known: Set<string>): string[] {
  return queries.flatMap((q) => metricNames(q.expr).filter((n) => !known.has(n)).map((n) => `${q.where}: ${n}`));
}

/** True when the expression reads operator metrics (the operator job), false for node metrics. */
export function isOperatorQuery(expr: string): boolean {
  return metricNames(expr).some((n) => n.startsWith('celer_operator_'));
}

/**
 * The expression with the dashboard's variables replaced as Grafana does for one selected value
 * per variable (regex-escaped, since the queries match them with =~).
 */
export function withVariables(expr: string, values: Record<string, string>): string {
  return expr.replace(/\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?/g, (_match, name: string) => {
    const v = values[name];
    if (v === undefined) throw new Error(`no value for the dashboard variable $${name} in ${expr}`);
    return v.replace(/[.*+?^${}()|[\]\\]/g, '\\\\$&');
  });
}
