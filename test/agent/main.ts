// CLI for the test agent, for poking at a cluster by hand:
//   node test/agent/main.ts --kubeconfig RUN/kubeconfig --work-dir /tmp/agent [--namespace NS]...
// Runs until SIGINT/SIGTERM, then stops every process it started.
import path from 'node:path';
import { TestAgent } from './agent.ts';
import { defaultExecutables, celerEntrypoint } from './celer.ts';

const args = process.argv.slice(2);
const get = (name: string): string[] => args.flatMap((a, i) => (a === `--${name}` && args[i + 1] !== undefined ? [args[i + 1] as string] : []));
const kubeconfig = get('kubeconfig')[0] ?? process.env.KUBECONFIG;
if (kubeconfig === undefined) {
  console.error('usage: node test/agent/main.ts --kubeconfig FILE [--work-dir DIR] [--namespace NS]...');
  process.exit(2);
}
const namespaces = get('namespace');
const agent = await TestAgent.start({
  kubeconfig,
  workDir: get('work-dir')[0] ?? path.join(process.cwd(), '.cache', 'agent'),
  ...(namespaces.length > 0 ? { namespaces } : {}),
  executables: defaultExecutables(),
  entrypoint: celerEntrypoint,
  log: (l) => console.log(l),
});
const stop = (): void => {
  void agent.stop().then(() => process.exit(0));
};
process.on('SIGINT', stop);
process.on('SIGTERM', stop);
