// Builds web/dist: bundles src/app.js with esbuild (code-split: Yjs loads only on a task page),
// hashes asset names, writes index.html, the manifest, the icons and the service worker whose
// cache name is a hash of everything it precaches. Run `./build.sh` (or `npm run build`).
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, rmSync, writeFileSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { icons } from './icons.mjs';

const root = dirname(fileURLToPath(import.meta.url));
const src = join(root, 'src');
const dist = join(root, 'dist');
rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, 'assets'), { recursive: true });
mkdirSync(join(dist, 'icons'), { recursive: true });

const result = await build({
  entryPoints: [join(src, 'app.js'), join(src, 'styles.css')],
  bundle: true, splitting: true, format: 'esm', minify: true, target: ['es2022'],
  outdir: join(dist, 'assets'), entryNames: '[name]-[hash]', chunkNames: '[name]-[hash]',
  metafile: true, legalComments: 'none', logLevel: 'warning',
});
const outputs = Object.keys(result.metafile.outputs).map((p) => p.slice(p.indexOf('assets/')));
const js = outputs.find((p) => /assets\/app-.*\.js$/.test(p)).slice('assets/'.length);
const css = outputs.find((p) => p.endsWith('.css')).slice('assets/'.length);

const files = {};
files['index.html'] = readFileSync(join(src, 'index.html'), 'utf8').replace('{{JS}}', js).replace('{{CSS}}', css);
files['offline.html'] = readFileSync(join(src, 'offline.html'), 'utf8');
Object.assign(files, icons());
files['manifest.webmanifest'] = JSON.stringify({
  id: '/',
  name: 'pm — projects, tasks, teams',
  short_name: 'pm',
  description: 'Plan, track and ship work with your team, online or offline.',
  scope: '/',
  start_url: '/',
  display: 'standalone',
  orientation: 'any',
  theme_color: '#4f46e5',
  background_color: '#f5f6fa',
  categories: ['productivity', 'business'],
  icons: [
    { src: '/icons/icon-192.png', sizes: '192x192', type: 'image/png', purpose: 'any' },
    { src: '/icons/icon-512.png', sizes: '512x512', type: 'image/png', purpose: 'any' },
    { src: '/icons/maskable-512.png', sizes: '512x512', type: 'image/png', purpose: 'maskable' },
  ],
}, null, 2);
for (const [name, body] of Object.entries(files)) writeFileSync(join(dist, name), body);

// The service worker precaches the shell: every file above plus every built asset.
const assetFiles = readdirSync(join(dist, 'assets')).map((f) => `/assets/${f}`);
const shell = ['/index.html', '/offline.html', '/manifest.webmanifest', '/icons/icon-192.png', '/icons/icon-512.png', '/icons/maskable-512.png', ...assetFiles];
const hash = createHash('sha256');
for (const p of shell) hash.update(p).update(readFileSync(join(dist, p)));
const version = hash.digest('hex').slice(0, 12);
writeFileSync(join(dist, 'sw.js'), readFileSync(join(src, 'sw.js'), 'utf8')
  .replace("'__VERSION__'", `'${version}'`).replace('= __PRECACHE__;', `= ${JSON.stringify(shell)};`));

const sizes = outputs.map((p) => `${p} ${(result.metafile.outputs[Object.keys(result.metafile.outputs).find((k) => k.endsWith(p))].bytes / 1024).toFixed(1)} KiB`);
console.log(`built dist/ (shell ${version})\n  ${sizes.join('\n  ')}`);
