// Reporting and replay for the power-loss harness (powerloss.ts): the result of a run, the
// command line that replays a seed, the de-duplicated failure list every check reports into,
// and the ring of the engine's last log lines.
import type { Scenario } from './powerloss-scenarios.ts';

export interface RunResult {
  seed: number;
  scenario: Scenario;
  failures: string[];
  /** One line: what happened (for replay comparisons and failure messages). */
  summary: string;
  /** The engine's log lines, last ones (for failure messages). */
  log: string[];
}

/** The command line that replays one seed (with its scenario when it was forced). */
export function replayCommand(seed: number, scenario?: Scenario): string {
  return `CELER_SIM_SEED=${seed}${scenario !== undefined ? ` CELER_SIM_SCENARIO=${scenario}` : ''} node_modules/.bin/node --test test/sim/powerloss.test.ts`;
}

/**
 * Adds failures to `into`, at most 40, and each kind once: after the shard stops serving, every
 * later request fails the same way, and one line says it (numbers aside, messages repeat).
 */
export function failureList(into: string[]): (msg: string) => void {
  const kinds = new Set(into.map((m) => m.replace(/\d+/g, '#')));
  return (msg) => {
    const kind = msg.replace(/\d+/g, '#');
    if (kinds.has(kind) || into.length >= 40) return;
    kinds.add(kind);
    into.push(msg);
  };
}

/** A log sink keeping the engine's last 60 lines in `into`. */
export function engineLogInto(into: string[]): (m: string) => void {
  return (m: string): void => {
    into.push(m);
    if (into.length > 60) into.shift();
  };
}
