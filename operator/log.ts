// Structured logs: one JSON object per line on stderr, with a stable `msg` and key/value
// details. CELER_TRACE=operator turns on debug lines (one per reconcile pass).

export type Level = 'debug' | 'info' | 'warn' | 'error';

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

export function jsonLogger(write: (line: string) => void = (l) => process.stderr.write(l), debug = (process.env.CELER_TRACE ?? '').split(',').includes('operator')): Logger {
  const emit = (level: Level, msg: string, fields: Record<string, unknown> = {}): void => {
    if (level === 'debug' && !debug) return;
    const safe = Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, v instanceof Error ? v.message : v]));
    write(`${JSON.stringify({ time: new Date().toISOString(), level, component: 'celer-operator', msg, ...safe })}\n`);
  };
  return {
    debug: (m, f) => emit('debug', m, f),
    info: (m, f) => emit('info', m, f),
    warn: (m, f) => emit('warn', m, f),
    error: (m, f) => emit('error', m, f),
  };
}
