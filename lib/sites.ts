// Where allocations were made, for debug mode: a JavaScript stack trimmed to the caller's frames,
// interned so each allocation carries a small number.
import * as path from 'node:path';

const OWN_DIR = path.dirname(__filename) + path.sep; // lib/ under ts-node, dist/ when installed
const FRAMES = 4;

export class SiteTable {
  private readonly ids = new Map<string, number>();
  private readonly names: string[] = ['(unknown)'];

  /** The id of the caller's site (frames outside mempool and Node's internals). */
  capture(): number {
    const holder: { stack?: string } = {};
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 16;
    Error.captureStackTrace(holder, this.capture);
    Error.stackTraceLimit = limit;
    const frames = (holder.stack ?? '')
      .split('\n')
      .slice(1)
      .map((line) => line.trim())
      .filter((line) => !line.includes(OWN_DIR) && !line.includes('node:internal') && !line.includes('(node:'));
    const site = frames.slice(0, FRAMES).join('\n') || '(unknown)';
    let id = this.ids.get(site);
    if (id === undefined) {
      id = this.names.length;
      this.names.push(site);
      this.ids.set(site, id);
    }
    return id;
  }

  name(id: number): string {
    return this.names[id] ?? '(unknown)';
  }
}
