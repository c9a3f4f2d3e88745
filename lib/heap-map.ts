// Pictures of a heap: where the used blocks and the free runs lie along a region. From blocks as
// pool.blocks() yields them ({ offset, size, used } in address order) and the region's size: a text grid
// for terminals (renderHeapMapText) and an SVG (renderHeapMapSvg). Bytes no block covers (a shared
// segment's header and directory, the heaps' own metadata) are drawn as bookkeeping.
import type { BlockInfo } from './types';

/** Options of renderHeapMapText(). */
export interface HeapMapTextOptions {
  /** Cells per row (default 64). */
  width?: number;
  /** Rows (default 8). */
  rows?: number;
  /** Plain ASCII instead of block characters (default: true when stdout is not a TTY). */
  ascii?: boolean;
  /** Print the legend under the grid (default true). */
  legend?: boolean;
}

/** Options of renderHeapMapSvg(). */
export interface HeapMapSvgOptions {
  /** Width of the picture in pixels (default 1024). */
  width?: number;
  /** The most rows the region is wrapped into (default 48). */
  maxRows?: number;
  /** The title's first words (default 'heap'); the size and use are added. */
  title?: string;
}

/** A size class of the heap map's legend (SIZE_CLASSES). */
export interface SizeClass {
  /** The largest block in the class, in usable bytes (Infinity for the last). */
  max: number;
  /** The legend's text, e.g. '<= 64 B'. */
  label: string;
  /** The SVG fill colour of its used blocks, '#rrggbb'. */
  color: string;
}

/** Colours of used blocks by size (usable bytes), smallest first. */
export const SIZE_CLASSES: readonly SizeClass[] = [
  { max: 64, label: '<= 64 B', color: '#4e79a7' },
  { max: 256, label: '<= 256 B', color: '#59a14f' },
  { max: 1024, label: '<= 1 KiB', color: '#edc948' },
  { max: 4096, label: '<= 4 KiB', color: '#f28e2b' },
  { max: 65536, label: '<= 64 KiB', color: '#e15759' },
  { max: Infinity, label: '> 64 KiB', color: '#b07aa1' },
];

const FREE_COLOR = '#e4e4e4';
const BOOKKEEPING_COLOR = '#9a9a9a';

/** The entry of SIZE_CLASSES for a block of `size` usable bytes: the first whose `max` is at least `size`. */
export function sizeClassOf(size: number): SizeClass {
  for (const c of SIZE_CLASSES) if (size <= c.max) return c;
  return SIZE_CLASSES[SIZE_CLASSES.length - 1];
}

/** 1536 -> '1.5 KiB'; whole numbers of a unit keep one decimal ('4.0 MiB'), bytes none ('100 B'). */
export function formatBytes(n: number): string {
  if (!Number.isFinite(n)) return String(n);
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(1)} ${units[u]}`;
}

function checkRegion(size: number): void {
  if (typeof size !== 'number' || !Number.isFinite(size) || size < 0) {
    throw new RangeError(`Expected a region size >= 0 but received ${String(size)}`);
  }
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`Expected a positive integer for ${name} but received ${String(value)}`);
  return value;
}

const UNICODE_LEVELS = ['.', '░', '▒', '▓', '█'];
const ASCII_LEVELS = ['.', ':', '+', '*', '#'];
const BOOKKEEPING_CHAR = '=';

function level(used: number, covered: number): number {
  if (used <= 0) return 0;
  const f = used / covered;
  if (f <= 0.25) return 1;
  if (f <= 0.5) return 2;
  if (f <= 0.75) return 3;
  return 4;
}

/**
 * A grid of `rows` x `width` cells over [0, size): each cell covers size / (width * rows) bytes and shows
 * how much of the heap there is used ('.' free, then '░▒▓█' or ':+*#' as the used share grows, '=' where no
 * block lies: headers and bookkeeping). Rows start with their first byte's offset; a legend follows.
 */
export function renderHeapMapText(blocks: Iterable<BlockInfo>, size: number, options: HeapMapTextOptions = {}): string {
  checkRegion(size);
  const width = positiveInt(options.width, 64, 'options.width');
  const rows = positiveInt(options.rows, 8, 'options.rows');
  const ascii = options.ascii ?? !(typeof process !== 'undefined' && process.stdout && process.stdout.isTTY);
  const cells = width * rows;
  const cellBytes = size / cells;
  const used = new Float64Array(cells);
  const covered = new Float64Array(cells);
  if (size > 0) {
    for (const b of blocks) {
      const start = Math.max(0, b.offset);
      const end = Math.min(size, b.offset + b.size);
      if (end <= start) continue;
      const first = Math.min(cells - 1, Math.floor(start / cellBytes));
      const last = Math.min(cells - 1, Math.floor((end - 1) / cellBytes));
      for (let c = first; c <= last; c++) {
        const lo = Math.max(start, c * cellBytes);
        const hi = Math.min(end, (c + 1) * cellBytes);
        if (hi <= lo) continue;
        covered[c] += hi - lo;
        if (b.used) used[c] += hi - lo;
      }
    }
  }
  const levels = ascii ? ASCII_LEVELS : UNICODE_LEVELS;
  const labelWidth = Math.max(4, Math.ceil(Math.log2(Math.max(size, 2)) / 4)) + 2;
  const out: string[] = [];
  for (let r = 0; r < rows; r++) {
    let line = '';
    for (let c = r * width; c < (r + 1) * width; c++) {
      line += covered[c] > 0 ? levels[level(used[c], covered[c])] : BOOKKEEPING_CHAR;
    }
    const label = '0x' + Math.floor(r * width * cellBytes).toString(16).padStart(labelWidth - 2, '0');
    out.push(`${label} ${ascii ? '|' : '│'}${line}${ascii ? '|' : '│'}`);
  }
  if (options.legend !== false) {
    const [free, l1, l2, l3, l4] = levels;
    out.push(
      `cell = ${formatBytes(Math.round(cellBytes * 10) / 10)}   ${free} free  ${l1} <=25% used  ${l2} <=50%  ${l3} <=75%  ${l4} >75%  ` +
        `${BOOKKEEPING_CHAR} header/bookkeeping`,
    );
  }
  return out.join('\n');
}

function escapeXml(s: string): string {
  return s.replace(/[<>&'"]/g, (ch) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', "'": '&apos;', '"': '&quot;' })[ch]!);
}

function hex(n: number): string {
  return '0x' + n.toString(16);
}

function nextPow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Rounds to 0.01 px so the file stays small. */
function px(n: number): string {
  return String(Math.round(n * 100) / 100);
}

/**
 * An SVG of the region as a horizontal band wrapped into rows of a fixed number of bytes (chosen so small
 * blocks stay visible): every used block is one <rect class="used"> coloured by its size class (a block
 * that crosses a row boundary continues in <rect class="cont"> pieces), free runs are light grey
 * <rect class="free">, bookkeeping darker grey. A title with the size and use, and a legend.
 */
export function renderHeapMapSvg(blocks: Iterable<BlockInfo>, size: number, options: HeapMapSvgOptions = {}): string {
  checkRegion(size);
  const width = positiveInt(options.width, 1024, 'options.width');
  const maxRows = positiveInt(options.maxRows, 48, 'options.maxRows');
  const list = Array.from(blocks, (b) => ({ offset: b.offset, size: b.size, used: b.used })).filter(
    (b) => b.size > 0 && b.offset < size && b.offset + b.size > 0,
  );
  let usedBytes = 0;
  let usedBlocks = 0;
  let smallestUsed = Infinity;
  for (const b of list) {
    if (!b.used) continue;
    usedBytes += b.size;
    usedBlocks++;
    smallestUsed = Math.min(smallestUsed, b.size);
  }
  // Free runs: adjacent free blocks drawn as one.
  const runs: Array<{ offset: number; size: number; used: boolean }> = [];
  for (const b of list) {
    const prev = runs[runs.length - 1];
    if (!b.used && prev !== undefined && !prev.used && prev.offset + prev.size === b.offset) prev.size += b.size;
    else runs.push({ ...b });
  }

  const margin = 10;
  const labelW = 78;
  const bandX = margin + labelW;
  const bandW = Math.max(16, width - bandX - margin);
  // Bytes per row: the smallest used block gets ~2 px, within [size / maxRows, size], as a power of two.
  const regionBytes = Math.max(size, 1);
  const target = Number.isFinite(smallestUsed) ? (smallestUsed * bandW) / 2 : regionBytes;
  let rowBytes = nextPow2(Math.max(Math.ceil(regionBytes / maxRows), Math.min(regionBytes, Math.ceil(target))));
  if (rowBytes >= regionBytes) rowBytes = regionBytes;
  const rowCount = Math.max(1, Math.ceil(regionBytes / rowBytes));
  const rowH = 16;
  const rowGap = 6;
  const titleH = 46;
  const bandTop = titleH;
  const legendTop = bandTop + rowCount * (rowH + rowGap) + 8;
  const height = legendTop + 44;
  const scale = bandW / rowBytes;

  const title = `${options.title ?? 'heap'}: ${formatBytes(size)}, used ${formatBytes(usedBytes)} in ${usedBlocks} block${usedBlocks === 1 ? '' : 's'} (${
    size > 0 ? ((100 * usedBytes) / size).toFixed(1) : '0.0'
  }%)`;
  const out: string[] = [];
  out.push('<?xml version="1.0" encoding="UTF-8"?>');
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
  );
  out.push(`<title>${escapeXml(title)}</title>`);
  out.push(`<rect class="background" x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(`<text x="${margin}" y="20" font-size="14" font-weight="bold">${escapeXml(title)}</text>`);
  out.push(
    `<text x="${margin}" y="36" fill="#555555">${rowCount} row${rowCount === 1 ? '' : 's'} of ${escapeXml(formatBytes(rowBytes))}; offsets on the left</text>`,
  );

  // Row backgrounds: bytes no block covers show through as bookkeeping.
  out.push('<g class="rows">');
  for (let r = 0; r < rowCount; r++) {
    const y = bandTop + r * (rowH + rowGap);
    const bytes = Math.min(rowBytes, regionBytes - r * rowBytes);
    out.push(`<text x="${margin}" y="${y + 12}" fill="#555555">${hex(r * rowBytes)}</text>`);
    out.push(`<rect class="bookkeeping" x="${bandX}" y="${y}" width="${px(bytes * scale)}" height="${rowH}" fill="${BOOKKEEPING_COLOR}"/>`);
  }
  out.push('</g>');

  out.push('<g class="blocks">');
  for (const b of runs) {
    const start = Math.max(0, b.offset);
    const end = Math.min(size, b.offset + b.size);
    const cls = b.used ? 'used' : 'free';
    const fill = b.used ? sizeClassOf(b.size).color : FREE_COLOR;
    const tip = `${b.used ? 'used' : 'free'} ${hex(b.offset)} ${formatBytes(b.size)}${b.used ? '' : ' run'}`;
    let first = true;
    for (let at = start; at < end; ) {
      const r = Math.floor(at / rowBytes);
      const rowEnd = Math.min((r + 1) * rowBytes, end);
      const x = bandX + (at - r * rowBytes) * scale;
      const w = Math.max((rowEnd - at) * scale, b.used ? 1 : 0.5);
      const y = bandTop + r * (rowH + rowGap);
      const c = first || !b.used ? cls : 'cont';
      out.push(
        `<rect class="${c}" x="${px(x)}" y="${y}" width="${px(w)}" height="${rowH}" fill="${fill}"${
          b.used ? ` data-offset="${b.offset}" data-size="${b.size}"` : ''
        }${b.used && w >= 4 ? ' stroke="#ffffff" stroke-width="0.5"' : ''}><title>${tip}</title></rect>`,
      );
      first = false;
      at = rowEnd;
    }
  }
  out.push('</g>');

  // Legend.
  out.push('<g class="legend">');
  const items: Array<[string, string]> = [
    ...SIZE_CLASSES.map((c): [string, string] => [c.color, `used ${c.label}`]),
    [FREE_COLOR, 'free'],
    [BOOKKEEPING_COLOR, 'header / bookkeeping'],
  ];
  const perRow = 4;
  const itemW = Math.max(120, Math.floor((width - 2 * margin) / perRow));
  items.forEach(([color, label], i) => {
    const x = margin + (i % perRow) * itemW;
    const y = legendTop + Math.floor(i / perRow) * 18;
    out.push(`<rect class="swatch" x="${x}" y="${y}" width="12" height="12" fill="${color}" stroke="#666666" stroke-width="0.5"/>`);
    out.push(`<text x="${x + 18}" y="${y + 10}">${escapeXml(label)}</text>`);
  });
  out.push('</g>');
  out.push('</svg>');
  return out.join('\n') + '\n';
}
