// Draws the app icons as real PNGs (no image tooling needed): an indigo tile with three white
// board columns. `any` icons have rounded corners and a margin; the maskable one is full bleed
// with its artwork inside the 80 % safe zone. Anti-aliased by 4x4 supersampling.
import { deflateSync } from 'node:zlib';

const CRC = new Int32Array(256).map((_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c;
});
function crc32(buf) {
  let c = -1;
  for (const b of buf) c = CRC[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}
function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}
function png(size, rgba) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(size, 0);
  ihdr.writeUInt32BE(size, 4);
  ihdr[8] = 8; ihdr[9] = 6; // 8-bit RGBA
  const raw = Buffer.alloc((size * 4 + 1) * size);
  for (let y = 0; y < size; y++) rgba.copy(raw, y * (size * 4 + 1) + 1, y * size * 4, (y + 1) * size * 4);
  return Buffer.concat([Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]), chunk('IHDR', ihdr), chunk('IDAT', deflateSync(raw, { level: 9 })), chunk('IEND', Buffer.alloc(0))]);
}

const inRoundRect = (x, y, x0, y0, x1, y1, r) => {
  if (x < x0 || x > x1 || y < y0 || y > y1) return false;
  const cx = Math.min(Math.max(x, x0 + r), x1 - r);
  const cy = Math.min(Math.max(y, y0 + r), y1 - r);
  return (x - cx) ** 2 + (y - cy) ** 2 <= r * r;
};

/** Unit-square shapes: background tile and the three columns. */
function draw(size, maskable) {
  const out = Buffer.alloc(size * size * 4);
  const tile = maskable ? [0, 0, 1, 1, 0] : [0.04, 0.04, 0.96, 0.96, 0.22];
  const s = maskable ? 0.62 : 0.7; // artwork scale
  const o = (1 - s) / 2;
  const cols = [[0.08, 0.14, 0.3, 0.86], [0.39, 0.14, 0.61, 0.66], [0.7, 0.14, 0.92, 0.5]]
    .map(([a, b, c, d]) => [o + a * s, o + b * s, o + c * s, o + d * s, 0.05 * s]);
  const N = 4;
  for (let py = 0; py < size; py++) {
    for (let px = 0; px < size; px++) {
      let bg = 0; let fg = 0; let r = 0; let g = 0; let b = 0;
      for (let sy = 0; sy < N; sy++) {
        for (let sx = 0; sx < N; sx++) {
          const x = (px + (sx + 0.5) / N) / size;
          const y = (py + (sy + 0.5) / N) / size;
          if (!inRoundRect(x, y, ...tile)) continue;
          bg++;
          if (cols.some((c) => inRoundRect(x, y, ...c))) { fg++; r += 255; g += 255; b += 255; } else {
            const t = (x + y) / 2; // indigo → violet diagonal
            r += 79 + (124 - 79) * t; g += 70 + (58 - 70) * t; b += 229 + (237 - 229) * t;
          }
        }
      }
      const i = (py * size + px) * 4;
      if (bg) { out[i] = r / bg; out[i + 1] = g / bg; out[i + 2] = b / bg; }
      out[i + 3] = Math.round((bg / (N * N)) * 255);
    }
  }
  return png(size, out);
}

export function icons() {
  return {
    'icons/icon-192.png': draw(192, false),
    'icons/icon-512.png': draw(512, false),
    'icons/maskable-512.png': draw(512, true),
  };
}
