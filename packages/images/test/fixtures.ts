// Locating the CRIU 4.2 fixtures (../shared beside the checkout) for the tests.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** packages/images/dist/test -> the workspace root. */
export const WORKSPACE_ROOT = resolve(here, '..', '..', '..', '..');
export const SHARED = resolve(WORKSPACE_ROOT, '..', 'shared');
export const IMAGES_ROOT = join(SHARED, 'criu-images');
export const JSON_ROOT = join(SHARED, 'crit-4.2-json');
export const HAVE_FIXTURES = existsSync(IMAGES_ROOT) && existsSync(JSON_ROOT);

export function fixtureDirs(): string[] {
  if (!HAVE_FIXTURES) return [];
  return readdirSync(IMAGES_ROOT)
    .filter((d) => statSync(join(IMAGES_ROOT, d)).isDirectory())
    .sort();
}

/** Image files of a fixture dump (raw pages files excluded). */
export function fixtureImages(dir: string): string[] {
  return readdirSync(join(IMAGES_ROOT, dir))
    .filter((f) => !f.startsWith('pages-'))
    .sort();
}
