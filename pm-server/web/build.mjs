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

// esbuild writes unhashed names; the names get a hash of their final content here, so the
// build is reproducible anywhere (esbuild's own hashes also depend on the install layout).
const result = await build({
  entryPoints: [join(src, 'app.js'), join(src, 'styles.css')],
  bundle: true, splitting: true, format: 'esm', minify: true, target: ['es2022'],
  outdir: join(dist, 'assets'), entryNames: '[name]', chunkNames: '[name]',
  metafile: true, legalComments: 'none', logLevel: 'warning', write: false,
});
const contentHash = (text) => createHash('sha256').update(text).digest('base64url').replace(/[-_]/g, '').slice(0, 10);
const built = result.outputFiles.map((f) => ({ name: f.path.slice(f.path.lastIndexOf('/') + 1), text: f.text }));
// Chunks (imported by others) first, so their final names are in place before their importers
// are hashed.
built.sort((a, b) => (a.name === 'app.js') - (b.name === 'app.js'));
const renamed = {};
for (const f of built) {
  for (const [from, to] of Object.entries(renamed)) f.text = f.text.split(`./${from}`).join(`./${to}`);
  const dot = f.name.lastIndexOf('.');
  renamed[f.name] = `${f.name.slice(0, dot)}-${contentHash(f.text)}${f.name.slice(dot)}`;
  writeFileSync(join(dist, 'assets', renamed[f.name]), f.text);
}
const js = renamed['app.js'];
const css = renamed['styles.css'];
const outputs = built.map((f) => `assets/${renamed[f.name]} ${(Buffer.byteLength(f.text) / 1024).toFixed(1)} KiB`);

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

console.log(`built dist/ (shell ${version})\n  ${outputs.join('\n  ')}`);
