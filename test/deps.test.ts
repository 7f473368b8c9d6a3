// Every package the shipped code loads at run time must be in package.json `dependencies`: the
// image installs with `npm ci --omit=dev`, so a runtime import of a devDependency works in every
// checkout (full dev install) and fails only in production, with ERR_MODULE_NOT_FOUND at startup.
// This scans the runtime sources with the TypeScript parser; test/e2e/prod-install.test.ts then
// proves the same thing end to end on a real production install.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { isBuiltin } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

const ROOT = fileURLToPath(new URL('../', import.meta.url));

/** The folders whose code runs in production (the Dockerfile copies them into the image). */
export const RUNTIME_DIRS = ['bin', 'client', 'dataplane', 'operator'] as const;

/** Folders inside RUNTIME_DIRS that hold dev tooling only: the deterministic simulator (`npm run sim`). */
export const DEV_ONLY_DIRS = ['dataplane/sim/'] as const;

/** Source files that never run in production: tests, benchmarks, test/ and hack/ folders, DEV_ONLY_DIRS. */
export function isDevOnly(file: string): boolean {
  const f = path.posix.normalize(file);
  return /\.(test|bench)\.[cm]?[jt]s$/.test(f) || f.split('/').some((part) => part === 'test' || part === 'hack')
    || DEV_ONLY_DIRS.some((d) => f.startsWith(d));
}

const SOURCE = /\.[cm]?[jt]s$/;

export interface Import {
  file: string;
  specifier: string;
  line: number;
}

function stringArg(node: ts.CallExpression): ts.StringLiteralLike | null {
  const a = node.arguments[0];
  return a !== undefined && ts.isStringLiteralLike(a) ? a : null;
}

/**
 * The module specifiers a source file loads at run time: static imports and re-exports that are
 * not type-only, side-effect imports, `import('x')`, and `require('x')` (also through a
 * createRequire result named `require`). Type-only forms are erased by Node's type stripping.
 */
export function runtimeImports(file: string, text: string): Import[] {
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const found: Import[] = [];
  const add = (lit: ts.StringLiteralLike): void => {
    found.push({ file, specifier: lit.text, line: sf.getLineAndCharacterOfPosition(lit.getStart(sf)).line + 1 });
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) && ts.isStringLiteralLike(node.moduleSpecifier)) {
      const clause = node.importClause;
      const typeOnly = clause !== undefined && (clause.isTypeOnly
        || (clause.name === undefined && clause.namedBindings !== undefined && ts.isNamedImports(clause.namedBindings)
          && clause.namedBindings.elements.length > 0 && clause.namedBindings.elements.every((e) => e.isTypeOnly)));
      if (!typeOnly) add(node.moduleSpecifier);
    } else if (ts.isExportDeclaration(node) && node.moduleSpecifier !== undefined && ts.isStringLiteralLike(node.moduleSpecifier)) {
      if (!node.isTypeOnly) add(node.moduleSpecifier);
    } else if (ts.isCallExpression(node)) {
      const lit = stringArg(node);
      const callee = node.expression;
      if (lit !== null && (callee.kind === ts.SyntaxKind.ImportKeyword || (ts.isIdentifier(callee) && callee.text === 'require'))) add(lit);
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  return found;
}

/** 'pkg/sub' → 'pkg', '@scope/pkg/sub' → '@scope/pkg'; null for relative, absolute and builtin specifiers. */
export function packageOf(specifier: string): string | null {
  if (specifier.startsWith('.') || specifier.startsWith('/') || specifier.startsWith('#') || isBuiltin(specifier)) return null;
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0]!;
}

interface PackageJson {
  name?: string;
  dependencies?: Record<string, string>;
  devDependencies?: Record<string, string>;
  workspaces?: string[];
}

function readJson(file: string): PackageJson {
  return JSON.parse(readFileSync(file, 'utf8')) as PackageJson;
}

export interface Problem {
  where: string;
  message: string;
}

/**
 * Checks the repository at `root`: every bare runtime import names a package in `dependencies`
 * (or a workspace package, which npm links in a production install too), and no runtime file
 * imports a dev-only file (whose own imports this check does not cover).
 */
export function checkRuntimeDependencies(root: string): { problems: Problem[]; files: number; packages: Set<string> } {
  const pkg = readJson(path.join(root, 'package.json'));
  const deps = new Set(Object.keys(pkg.dependencies ?? {}));
  const dev = new Set(Object.keys(pkg.devDependencies ?? {}));
  const workspaces = new Set((pkg.workspaces ?? []).map((w) => readJson(path.join(root, w, 'package.json')).name).filter((n) => n !== undefined));
  const listed = execFileSync('git', ['ls-files', '--cached', '--others', '--exclude-standard', '--', ...RUNTIME_DIRS], { cwd: root, encoding: 'utf8' });
  const files = listed.split('\n').filter((f) => SOURCE.test(f) && !isDevOnly(f));
  const problems: Problem[] = [];
  const packages = new Set<string>();
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(path.join(root, file), 'utf8');
    } catch {
      continue; // deleted in the working tree
    }
    for (const imp of runtimeImports(file, text)) {
      const where = `${imp.file}:${imp.line}`;
      const name = packageOf(imp.specifier);
      if (name === null) {
        if (imp.specifier.startsWith('.') && isDevOnly(path.posix.join(path.posix.dirname(file), imp.specifier))) {
          problems.push({ where, message: `runtime code imports the dev-only file ${imp.specifier}` });
        }
        continue;
      }
      packages.add(name);
      if (deps.has(name) || workspaces.has(name)) continue;
      problems.push({
        where,
        message: dev.has(name)
          ? `imports ${name}, a devDependency: npm ci --omit=dev (the image) leaves it out; move it to "dependencies"`
          : `imports ${name}, which package.json does not list; add it to "dependencies"`,
      });
    }
  }
  return { problems, files: files.length, packages };
}

test('every bare import of the runtime sources is a production dependency', () => {
  const { problems, files, packages } = checkRuntimeDependencies(ROOT);
  assert.ok(files > 50, `scanned only ${files} runtime files: is RUNTIME_DIRS right?`);
  // The scan must see the packages the node and the operator are known to load.
  for (const known of ['@napi-rs/blake-hash', '@kubernetes/client-node', '@grpc/grpc-js', '@celer/client']) assert.ok(packages.has(known), known);
  assert.deepEqual(problems.map((p) => `${p.where}: ${p.message}`), []);
});

test('the scan reports a devDependency import, an unlisted one and an import of a test file; type-only imports are ignored', () => {
  const text = [
    "import type { A } from 'only-types';",
    "import { type B } from 'also-types';",
    "export type { C } from 'types-again';",
    "import { x } from '@scope/lib/sub';",
    "import 'side-effect';",
    "const y = await import('lazy');",
    "const z = require('cjs');",
    "import { readFile } from 'node:fs';",
    "import { join } from 'path';",
    "import { helper } from './helper.ts';",
  ].join('\n');
  assert.deepEqual(runtimeImports('x.ts', text).map((i) => i.specifier), ['@scope/lib/sub', 'side-effect', 'lazy', 'cjs', 'node:fs', 'path', './helper.ts']);
  assert.deepEqual(['@scope/lib/sub', 'side-effect', 'node:fs', 'path', './helper.ts'].map(packageOf), ['@scope/lib', 'side-effect', null, null, null]);
  assert.ok(isDevOnly('dataplane/storage/hash.bench.ts') && isDevOnly('operator/flags.test.ts') && isDevOnly('test/lib/prng.ts') && isDevOnly('dataplane/sim/main.ts'));
  assert.ok(!isDevOnly('dataplane/storage/checksum.ts') && !isDevOnly('operator/reconcile/test-fixtures.ts'));
});

test('on a repository whose runtime code imports a devDependency, the check names the file, the line and the fix', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'celer-deps-'));
  try {
    const write = (file: string, text: string): void => {
      mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
      writeFileSync(path.join(dir, file), text);
    };
    write('package.json', JSON.stringify({ workspaces: ['client'], dependencies: { yaml: '1' }, devDependencies: { '@napi-rs/blake-hash': '1', typescript: '5' } }));
    write('client/package.json', JSON.stringify({ name: '@celer/client' }));
    write('dataplane/storage/checksum.ts', "import { parse } from 'yaml';\nimport { blake3 } from '@napi-rs/blake-hash';\n");
    write('dataplane/cli/main.ts', "import { connect } from '@celer/client';\nimport { fixture } from './x.test.ts';\nconst pg = await import('pg');\n");
    write('dataplane/storage/hash.bench.ts', "import ts from 'typescript';\n");
    write('test/e2e/a.ts', "import ts from 'typescript';\n");
    execFileSync('git', ['init', '-q'], { cwd: dir });
    const { problems } = checkRuntimeDependencies(dir);
    assert.deepEqual(problems.map((p) => p.where).sort(), ['dataplane/cli/main.ts:2', 'dataplane/cli/main.ts:3', 'dataplane/storage/checksum.ts:2']);
    assert.match(problems.find((p) => p.where === 'dataplane/storage/checksum.ts:2')!.message, /@napi-rs\/blake-hash, a devDependency: npm ci --omit=dev .* move it to "dependencies"/);
    assert.match(problems.find((p) => p.where === 'dataplane/cli/main.ts:3')!.message, /pg, which package.json does not list/);
    assert.match(problems.find((p) => p.where === 'dataplane/cli/main.ts:2')!.message, /dev-only file/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
