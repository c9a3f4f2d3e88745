#!/usr/bin/env node
// A node:cluster HTTP server whose workers share one SharedCache (issue 17's example):
//
//   node examples/cluster-cache/server.js            # serves http://127.0.0.1:8080/item/<id> until Ctrl-C
//   node examples/cluster-cache/server.js --demo     # sends itself 400 requests, prints the stats, exits
//
// The primary creates the cache and forks the workers; each worker opens it by name. A request for an
// item that is not cached computes it (a slow "database" call, 20 ms) under getOrSet, so of the workers
// asked for the same missing item at once one computes and the others wait for its value.
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');
const path = require('node:path');
const { SharedCache } = require(path.join(__dirname, '..', '..'));

const NAME = `cluster-cache-example-${process.env.CACHE_OWNER || process.pid}`;
const PORT = Number(process.env.PORT || 8080);
const WORKERS = 2;
const demo = process.argv.includes('--demo');

if (cluster.isPrimary) {
  const cache = SharedCache.create(NAME, { size: 32 << 20, maxEntries: 10000, defaultTtlMs: 60000 });
  const workers = [];
  for (let i = 0; i < WORKERS; i++) workers.push(cluster.fork({ CACHE_OWNER: String(process.pid) }));
  const stop = () => {
    for (const w of workers) w.kill();
    console.log('cache stats:', cache.stats());
    cache.close();
    SharedCache.unlink(NAME);
  };
  process.on('SIGINT', () => { stop(); process.exit(0); });
  let listening = 0;
  cluster.on('listening', async () => {
    if (++listening < WORKERS) return;
    if (!demo) return console.log(`listening on http://127.0.0.1:${PORT}/item/<id> (${WORKERS} workers, one cache)`);
    const ids = Array.from({ length: 400 }, (_, i) => i % 40); // each item asked for 10 times
    const bodies = await Promise.all(ids.map((id) => fetch(`http://127.0.0.1:${PORT}/item/${id}`).then((r) => r.text())));
    const wrong = bodies.filter((b, i) => b !== `item ${ids[i]}`).length;
    console.log(`${bodies.length} requests, ${wrong} wrong answers`);
    stop();
  });
} else {
  const cache = SharedCache.open(NAME);
  const slowDatabase = (id) => new Promise((resolve) => setTimeout(() => resolve(`item ${id}`), 20));
  http.createServer(async (req, res) => {
    const match = /^\/item\/(\w+)$/.exec(req.url);
    if (!match) {
      res.writeHead(404).end();
      return;
    }
    const value = await cache.getOrSet(`item:${match[1]}`, () => slowDatabase(match[1]));
    res.writeHead(200, { 'content-type': 'text/plain' }).end(value);
  }).listen(PORT);
}
