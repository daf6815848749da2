#!/usr/bin/env node
// Load generator for bench/fanout.py. Every peer lives in this one process, so the send
// timestamp embedded in a message and the receive time come from the same clock.
//
// Modes:
//   fanout  C channels (default 1) x N subscribers, one publisher per channel sending as fast as
//           the server accepts, with at most WINDOW messages per channel not yet received by
//           that channel's designated subscriber (the last to join, so the last the server fans
//           out to).
//   rate    C channels (default 100) x S subscribers, one publisher per channel, R msgs/s offered
//           in total, sent in timer-driven batches; reports publish-to-deliver latency.
//   idle    CONNECTIONS peers spread over C channels (default 100) that only connect and wait,
//           for the server's memory per idle connection: "mark:start" comes before the first
//           connect, "mark:stop" after the last one plus SETTLE + DURATION seconds.
//
// --protocol piesocket (default): plain WebSocket, one URL per channel (URL/CHANNEL?api_key=...);
//   the servers relay a text frame to every other member of its channel (c8ws, the floor, ws).
// --protocol socketio: socket.io-client 4 on its WebSocket transport (URL is the http:// base),
//   the channel in the handshake query; a message is a `message` event with the same text.
//
// --persistent adds `persistent=1` to the publishers' URLs (not the subscribers'), so the server
// stores every published message before delivering it.
//
// Output: exactly one JSON line on stdout. Progress marks go to stderr ("mark:start" when the
// measured phase begins, "mark:stop" when it ends) so the orchestrator can sample server CPU.
// Every phase has a deadline: the process always exits by itself.
'use strict';

const { performance } = require('node:perf_hooks');
const WebSocket = require('ws');
const { io } = require('socket.io-client');

const MESSAGE_BYTES = 100;
const CONNECT_BATCH = 50; // connections opened concurrently, to stay below the listen backlog

function parseArgs(argv) {
  const opts = {
    mode: 'fanout',
    protocol: 'piesocket',
    url: 'ws://127.0.0.1:8000/v3',
    apiKey: 'demo',
    subscribers: 100,
    channels: 0, // 0: the mode's default (fanout 1, rate and idle 100)
    connections: 10000, // idle mode
    rate: 2000,
    duration: 10,
    window: 200,
    settle: 1.0,
    drain: 30.0, // at most this long for the last deliveries after sending stops
    idle: 1.0, // ...and give up earlier once nothing arrived for this long
    tick: 5,
    connectTimeout: 30,
    deflate: false,
    persistent: false,
    channelPrefix: `b${process.pid}`,
  };
  for (let i = 2; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--deflate' || arg === '--persistent') {
      opts[arg.slice(2)] = true;
      continue;
    }
    const value = argv[i + 1];
    if (!arg.startsWith('--') || value === undefined) throw new Error(`bad argument ${arg}`);
    i += 1;
    const key = arg.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase());
    if (!(key in opts)) throw new Error(`unknown option ${arg}`);
    opts[key] = typeof opts[key] === 'number' ? Number(value) : value;
  }
  if (opts.channels <= 0) opts.channels = opts.mode === 'fanout' ? 1 : 100;
  if (!['piesocket', 'socketio'].includes(opts.protocol)) {
    throw new Error(`unknown protocol ${opts.protocol}`);
  }
  return opts;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Latency histogram: 10 us buckets below 100 ms, then 1 ms buckets up to 120 s. Bounded memory.
class Histogram {
  constructor() {
    this.fine = new Float64Array(10000);
    this.coarse = new Float64Array(120000);
    this.count = 0;
    this.max = 0;
  }

  add(ms) {
    this.count += 1;
    if (ms > this.max) this.max = ms;
    if (ms < 100) this.fine[Math.max(0, Math.floor(ms * 100))] += 1;
    else this.coarse[Math.min(this.coarse.length - 1, Math.floor(ms))] += 1;
  }

  quantile(q) {
    if (this.count === 0) return null;
    const rank = q * this.count;
    let seen = 0;
    for (let i = 0; i < this.fine.length; i += 1) {
      seen += this.fine[i];
      if (seen >= rank) return (i + 1) / 100;
    }
    for (let i = 0; i < this.coarse.length; i += 1) {
      seen += this.coarse[i];
      if (seen >= rank) return i + 1;
    }
    return this.max;
  }
}

// A message is JSON (what PieSocket clients typically send), padded to exactly MESSAGE_BYTES.
function makeMessage(channel, seq) {
  const head = `{"c":${channel},"s":${seq},"t":${performance.now().toFixed(3)},"p":"`;
  return `${head}${'x'.repeat(Math.max(0, MESSAGE_BYTES - head.length - 2))}"}`;
}

// Close codes of every connection closed by the server before the results are taken, counted
// from the moment it opens (a refusal, e.g. 4029, closes it before any run starts).
const closes = {};
const publishErrors = {}; // error code: publishes the server answered with an error frame
let counting = true;

// A publisher hears nothing but the server's answers to its publishes: an error frame is a
// publish the server refused (never delivered), not one lost on the way.
function watchPublisher(peer) {
  peer.onMessage((data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    const error = msg !== null && typeof msg === 'object' && msg.system && msg.system.error;
    if (error && counting) publishErrors[error.code] = (publishErrors[error.code] || 0) + 1;
  });
}

// A peer of either protocol: send(text), isOpen(), onMessage(fn(data)), terminate().
class WsPeer {
  constructor(ws) {
    this.ws = ws;
  }

  send(text) {
    this.ws.send(text);
  }

  isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  onMessage(fn) {
    this.ws.on('message', fn);
  }

  terminate() {
    this.ws.terminate();
  }
}

class SocketIoPeer {
  constructor(socket) {
    this.socket = socket;
  }

  send(text) {
    this.socket.emit('message', text);
  }

  isOpen() {
    return this.socket.connected;
  }

  onMessage(fn) {
    this.socket.on('message', fn);
  }

  terminate() {
    this.socket.disconnect();
  }
}

function connectWs(target, opts) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(target.url, { perMessageDeflate: opts.deflate });
    ws.on('close', (code) => {
      if (counting) closes[code] = (closes[code] || 0) + 1;
    });
    ws.on('error', () => {});
    const timer = setTimeout(() => {
      ws.terminate();
      reject(new Error('connect timeout'));
    }, opts.connectTimeout * 1000);
    ws.once('open', () => {
      clearTimeout(timer);
      resolve(new WsPeer(ws));
    });
    ws.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

// forceNew: one engine.io connection per peer, as a browser tab would have (by default
// socket.io-client multiplexes every socket to the same URL over one connection).
function connectSocketIo(target, opts) {
  return new Promise((resolve, reject) => {
    const socket = io(target.url, {
      transports: ['websocket'],
      forceNew: true,
      reconnection: false,
      perMessageDeflate: opts.deflate,
      timeout: opts.connectTimeout * 1000,
      query: { channel: target.channel },
    });
    socket.on('disconnect', (reason) => {
      if (counting) closes[reason] = (closes[reason] || 0) + 1;
    });
    socket.once('connect', () => resolve(new SocketIoPeer(socket)));
    socket.once('connect_error', (err) => {
      socket.close();
      reject(err);
    });
  });
}

function connect(target, opts) {
  return opts.protocol === 'socketio' ? connectSocketIo(target, opts) : connectWs(target, opts);
}

// Connects that failed (refused handshakes, timeouts): counted, the first few reasons kept, and
// the run goes on with the peers that did connect (expected deliveries count only those).
const refused = { count: 0, reasons: {} };

// One entry per target, in order: its peer, or null when it could not connect.
async function connectAll(targets, opts) {
  const peers = [];
  for (let i = 0; i < targets.length; i += CONNECT_BATCH) {
    const batch = targets.slice(i, i + CONNECT_BATCH).map((target) => connect(target, opts));
    for (const outcome of await Promise.allSettled(batch)) {
      if (outcome.status === 'fulfilled') {
        peers.push(outcome.value);
        continue;
      }
      peers.push(null);
      refused.count += 1;
      const reason = String(outcome.reason && outcome.reason.message).slice(0, 120);
      if (reason in refused.reasons || Object.keys(refused.reasons).length < 5) {
        refused.reasons[reason] = (refused.reasons[reason] || 0) + 1;
      }
    }
  }
  if (refused.count > 0 && peers.every((peer) => peer === null)) {
    throw new Error(`no connection succeeded: ${JSON.stringify(refused.reasons)}`);
  }
  return peers;
}

// The subscribers of each channel that connected (targets are grouped channel by channel).
function byChannel(subscribers, channels, perChannel) {
  return Array.from({ length: channels },
    (_, c) => subscribers.slice(c * perChannel, (c + 1) * perChannel).filter(Boolean));
}

// Where a subscriber of `channel` connects: {url, channel}.
function channelTarget(opts, channel) {
  const name = `${opts.channelPrefix}-${channel}`;
  if (opts.protocol === 'socketio') return { url: opts.url, channel: name };
  return { url: `${opts.url}/${name}?api_key=${opts.apiKey}`, channel: name };
}

// Publishers ask the server to store what they send when --persistent is given.
function publisherTarget(opts, channel) {
  const target = channelTarget(opts, channel);
  return opts.persistent ? { ...target, url: `${target.url}&persistent=1` } : target;
}

// One receiving peer: counts deliveries, checks order, feeds the shared latency histogram.
class Subscriber {
  constructor(peer, stats) {
    this.peer = peer;
    this.received = 0;
    this.lastSeq = 0;
    this.outOfOrder = 0;
    this.gaps = 0;
    this.onDelivery = null;
    peer.onMessage((data) => this.receive(data, stats));
  }

  receive(data, stats) {
    const now = performance.now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      stats.foreign += 1;
      return;
    }
    if (typeof msg.s !== 'number') {
      stats.foreign += 1;
      return;
    }
    this.received += 1;
    stats.delivered += 1;
    stats.lastDelivery = now;
    stats.histogram.add(now - msg.t);
    stats.track(msg.t, now - msg.t);
    if (msg.s <= this.lastSeq) this.outOfOrder += 1;
    else if (msg.s !== this.lastSeq + 1) this.gaps += 1;
    if (msg.s > this.lastSeq) this.lastSeq = msg.s;
    if (this.onDelivery !== null) this.onDelivery(msg.s);
  }
}

function newStats() {
  const stats = {
    delivered: 0, foreign: 0, lastDelivery: 0, histogram: new Histogram(),
    t0: null, maxBySecond: [],
  };
  // Worst latency per second of send time: shows whether a bad p99 is one stall or steady.
  stats.track = (sentAt, ms) => {
    if (stats.t0 === null) return;
    const second = Math.max(0, Math.floor((sentAt - stats.t0) / 1000));
    if (second < 600 && !(stats.maxBySecond[second] >= ms)) stats.maxBySecond[second] = ms;
  };
  return stats;
}

// After sending stops: wait for the backlog while it is still moving, bounded by opts.drain.
async function waitDrained(stats, expected, opts) {
  const deadline = performance.now() + opts.drain * 1000;
  let seen = stats.delivered;
  let lastProgress = performance.now();
  while (stats.delivered < expected) {
    await sleep(20);
    const now = performance.now();
    if (stats.delivered !== seen) {
      seen = stats.delivered;
      lastProgress = now;
    }
    if (now - lastProgress > opts.idle * 1000 || now > deadline) return false;
  }
  return true;
}

function orderSummary(subscribers) {
  return {
    out_of_order: subscribers.reduce((n, s) => n + s.outOfOrder, 0),
    gaps: subscribers.reduce((n, s) => n + s.gaps, 0),
  };
}

function latencySummary(stats) {
  const h = stats.histogram;
  return {
    p50_ms: h.quantile(0.5),
    p99_ms: h.quantile(0.99),
    max_ms: h.max,
    max_ms_by_second: Array.from(stats.maxBySecond, (ms) => Math.round(ms || 0)),
  };
}

function cpuPercent(usage, seconds) {
  return (100 * (usage.user + usage.system)) / 1e6 / seconds;
}

async function runFanout(opts) {
  const channels = Array.from({ length: opts.channels }, (_, c) => c);
  const targets = channels.flatMap((c) => Array(opts.subscribers).fill(channelTarget(opts, c)));
  const subSockets = await connectAll(targets, opts);
  const stats = newStats();
  const slots = subSockets.map((peer) => (peer === null ? null : new Subscriber(peer, stats)));
  const subscribers = slots.filter(Boolean);
  const members = byChannel(slots, opts.channels, opts.subscribers);
  await sleep(opts.settle * 1000);
  const publishers = await connectAll(channels.map((c) => publisherTarget(opts, c)), opts);
  for (const publisher of publishers) if (publisher !== null) watchPublisher(publisher);
  await sleep(100);

  // Per channel: its publisher keeps at most WINDOW messages ahead of its last subscriber. A
  // channel whose publisher or every subscriber failed to connect sends nothing.
  const sent = channels.map(() => 0);
  let running = true;
  const live = channels.filter((c) => publishers[c] !== null && members[c].length > 0);
  const pumps = live.map((c) => {
    const publisher = publishers[c];
    const designated = members[c][members[c].length - 1];
    const pump = () => {
      while (running && publisher.isOpen() && sent[c] - designated.received < opts.window) {
        sent[c] += 1;
        publisher.send(makeMessage(c, sent[c]));
      }
    };
    designated.onDelivery = pump;
    return pump;
  });

  process.stderr.write('mark:start\n');
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  stats.t0 = t0;
  for (const pump of pumps) pump();
  await sleep(opts.duration * 1000);
  running = false;
  const sendSeconds = (performance.now() - t0) / 1000;
  const sentTotal = sent.reduce((n, k) => n + k, 0);
  const expected = channels.reduce((n, c) => n + sent[c] * members[c].length, 0);
  const drained = await waitDrained(stats, expected, opts);
  const cpu = process.cpuUsage(cpu0);
  process.stderr.write('mark:stop\n');
  const seconds = (Math.max(stats.lastDelivery, t0 + 1) - t0) / 1000;

  const result = {
    mode: 'fanout',
    protocol: opts.protocol,
    channels: opts.channels,
    subscribers: subscribers.length,
    window: opts.window,
    deflate: opts.deflate,
    persistent: opts.persistent,
    sent: sentTotal,
    send_seconds: sendSeconds,
    expected,
    delivered: stats.delivered,
    lost: expected - stats.delivered,
    drained,
    seconds,
    messages_per_s: sentTotal / seconds,
    deliveries_per_s: stats.delivered / seconds,
    ...latencySummary(stats),
    ...orderSummary(subscribers),
    foreign_frames: stats.foreign,
    refused: refused.count,
    refused_reasons: { ...refused.reasons },
    closes_by_code: { ...closes },
    publish_errors: { ...publishErrors },
    generator_cpu_s: (cpu.user + cpu.system) / 1e6,
    generator_cpu_pct: cpuPercent(cpu, (performance.now() - t0) / 1000),
  };
  closeAll([...publishers, ...subSockets].filter(Boolean));
  return result;
}

async function runRate(opts) {
  const targets = [];
  for (let c = 0; c < opts.channels; c += 1) {
    for (let s = 0; s < opts.subscribers; s += 1) targets.push(channelTarget(opts, c));
  }
  const subSockets = await connectAll(targets, opts);
  const stats = newStats();
  const slots = subSockets.map((peer) => (peer === null ? null : new Subscriber(peer, stats)));
  const subscribers = slots.filter(Boolean);
  const members = byChannel(slots, opts.channels, opts.subscribers);
  const publisherTargets = Array.from({ length: opts.channels }, (_, c) => publisherTarget(opts, c));
  const publishers = await connectAll(publisherTargets, opts);
  for (const publisher of publishers) if (publisher !== null) watchPublisher(publisher);
  await sleep(opts.settle * 1000);

  // The offered rate is spread over the channels whose publisher connected.
  const live = publishers.flatMap((publisher, c) => (publisher === null ? [] : [c]));
  const seqs = new Array(opts.channels).fill(0);
  let sent = 0;
  let next = 0; // round-robin cursor into `live`
  const sendDue = (elapsedMs) => {
    const due = Math.floor((opts.rate * elapsedMs) / 1000);
    for (; sent < due; sent += 1) {
      const c = live[next];
      seqs[c] += 1;
      publishers[c].send(makeMessage(c, seqs[c]));
      next = (next + 1) % live.length;
    }
  };

  process.stderr.write('mark:start\n');
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  stats.t0 = t0;
  const durationMs = opts.duration * 1000;
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const elapsed = Math.min(performance.now() - t0, durationMs);
      sendDue(elapsed);
      if (elapsed >= durationMs) {
        clearInterval(timer);
        resolve();
      }
    }, opts.tick);
  });
  const expected = seqs.reduce((n, k, c) => n + k * members[c].length, 0);
  const drained = await waitDrained(stats, expected, opts);
  const cpu = process.cpuUsage(cpu0);
  process.stderr.write('mark:stop\n');

  const result = {
    mode: 'rate',
    protocol: opts.protocol,
    channels: opts.channels,
    subscribers_per_channel: opts.subscribers,
    offered_per_s: opts.rate,
    deflate: opts.deflate,
    persistent: opts.persistent,
    sent,
    expected,
    delivered: stats.delivered,
    lost: expected - stats.delivered,
    drained,
    seconds: opts.duration,
    messages_per_s: sent / opts.duration,
    deliveries_per_s: stats.delivered / opts.duration,
    ...latencySummary(stats),
    ...orderSummary(subscribers),
    foreign_frames: stats.foreign,
    refused: refused.count,
    refused_reasons: { ...refused.reasons },
    closes_by_code: { ...closes },
    publish_errors: { ...publishErrors },
    generator_cpu_s: (cpu.user + cpu.system) / 1e6,
    generator_cpu_pct: cpuPercent(cpu, (performance.now() - t0) / 1000),
  };
  closeAll([...publishers, ...subSockets].filter(Boolean));
  return result;
}

// Idle connections: what the server holds per connection that does nothing.
async function runIdle(opts) {
  const targets = Array.from({ length: opts.connections },
    (_, i) => channelTarget(opts, i % opts.channels));
  process.stderr.write('mark:start\n');
  await sleep(200); // the harness samples the server's memory before the first connect
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const peers = (await connectAll(targets, opts)).filter(Boolean);
  const connectSeconds = (performance.now() - t0) / 1000;
  let foreign = 0;
  for (const peer of peers) peer.onMessage(() => { foreign += 1; });
  await sleep((opts.settle + opts.duration) * 1000);
  const cpu = process.cpuUsage(cpu0);
  const seconds = (performance.now() - t0) / 1000;
  const open = peers.filter((peer) => peer.isOpen()).length;
  process.stderr.write('mark:stop\n');
  await sleep(200); // ...and again while every connection is still open
  const result = {
    mode: 'idle',
    protocol: opts.protocol,
    channels: opts.channels,
    connections: peers.length,
    open_at_end: open,
    connect_seconds: connectSeconds,
    connects_per_s: peers.length / connectSeconds,
    sent: 0,
    expected: 0,
    delivered: 0,
    lost: 0,
    drained: true,
    seconds,
    messages_per_s: 0,
    deliveries_per_s: 0,
    p50_ms: null,
    p99_ms: null,
    max_ms: null,
    out_of_order: 0,
    gaps: 0,
    foreign_frames: foreign,
    refused: refused.count,
    refused_reasons: { ...refused.reasons },
    closes_by_code: { ...closes },
    publish_errors: { ...publishErrors },
    generator_cpu_s: (cpu.user + cpu.system) / 1e6,
    generator_cpu_pct: cpuPercent(cpu, seconds),
  };
  closeAll(peers);
  return result;
}

function closeAll(peers) {
  counting = false;
  for (const peer of peers) peer.terminate();
}

async function main() {
  const opts = parseArgs(process.argv);
  // Hard stop: no phase may hang the benchmark.
  const limit = (opts.connectTimeout * 2 + opts.settle + opts.duration + opts.drain + 30) * 1000;
  setTimeout(() => {
    process.stderr.write('loadgen: overall deadline passed, giving up\n');
    process.exit(3);
  }, limit).unref();
  const run = { fanout: runFanout, rate: runRate, idle: runIdle }[opts.mode];
  if (run === undefined) throw new Error(`unknown mode ${opts.mode}`);
  const result = await run(opts);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
}

main().catch((err) => {
  process.stderr.write(`loadgen: ${err.stack || err}\n`);
  process.exit(2);
});
