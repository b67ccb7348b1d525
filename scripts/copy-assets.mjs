// Copies the browser libraries the appliance serves from node_modules (installed by `npm ci`,
// pinned in package-lock.json) into wwwroot/lib, which git ignores. Nothing third-party is committed.
import { cpSync, rmSync, mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const lib = join(root, 'wwwroot', 'lib');
const copies = [
  ['node_modules/@novnc/novnc/core', 'novnc/core'],
  ['node_modules/@novnc/novnc/vendor', 'novnc/vendor'],
  ['node_modules/@novnc/novnc/LICENSE.txt', 'novnc/LICENSE.txt'],
  ['node_modules/@xterm/xterm/lib/xterm.mjs', 'xterm/xterm.mjs'],
  ['node_modules/@xterm/xterm/css/xterm.css', 'xterm/xterm.css'],
  ['node_modules/@xterm/xterm/LICENSE', 'xterm/LICENSE'],
  ['node_modules/@xterm/addon-fit/lib/addon-fit.mjs', 'xterm/addon-fit.mjs'],
];
rmSync(lib, { recursive: true, force: true });
for (const [from, to] of copies) {
  const src = join(root, from);
  if (!existsSync(src)) { console.error(`copy-assets: ${from} missing; run npm ci`); process.exit(1); }
  mkdirSync(dirname(join(lib, to)), { recursive: true });
  cpSync(src, join(lib, to), { recursive: true });
}
console.log(`copy-assets: browser libraries in ${lib}`);
