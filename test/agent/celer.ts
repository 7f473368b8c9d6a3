// How the agent maps the Celer image onto this checkout: the image's `celer` binary is
// bin/celer, `node` is the pinned Node 24, and the image's entrypoint is `celer`.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ImageEntrypoint } from './podspec.ts';

export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
export const celerBin = path.join(repoRoot, 'bin', 'celer');
export const nodeBin = path.join(repoRoot, 'node_modules', '.bin', 'node');

export function defaultExecutables(): Record<string, string[]> {
  return { celer: [celerBin], node: [nodeBin] };
}

/** Any image whose repository's last path element is `celer` runs `celer` (the Dockerfile's entrypoint). */
export function celerEntrypoint(image: string): ImageEntrypoint | undefined {
  const withoutDigest = image.split('@')[0] ?? image;
  const lastSlash = withoutDigest.lastIndexOf('/');
  const colon = withoutDigest.lastIndexOf(':');
  const repo = colon > lastSlash ? withoutDigest.slice(0, colon) : withoutDigest;
  return repo.split('/').pop() === 'celer' ? { command: ['celer'] } : undefined;
}
