#!/usr/bin/env node
// Peer server for bench/fanout.py: the plain broadcast relay of the `ws` package, the one its
// README shows ("broadcast to every other client"), kept per channel. A text frame received on
// /v3/<channel> goes verbatim to every OTHER open member of that channel, as c8ws's PieSocket
// route and bench/floor_app.py do; no keys, no records, no broker.
//
// Run: `node ws_server.js [--port 0]`; prints `ws listening on http://127.0.0.1:PORT` once
// ready; SIGTERM or SIGINT stops it.
'use strict';

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

const HOST = '127.0.0.1';
const MAX_MESSAGE_BYTES = 1024 * 1024;

function main() {
  const portFlag = process.argv.indexOf('--port');
  const port = portFlag > 0 ? Number(process.argv[portFlag + 1]) : 0;
  const channels = new Map(); // channel name -> Set of sockets
  const server = http.createServer((req, res) => {
    res.writeHead(404).end();
  });
  const wss = new WebSocketServer({ server, maxPayload: MAX_MESSAGE_BYTES });

  wss.on('connection', (ws, req) => {
    const channel = new URL(req.url, 'http://x').pathname.replace(/^\/v3\//, '');
    let members = channels.get(channel);
    if (members === undefined) {
      members = new Set();
      channels.set(channel, members);
    }
    members.add(ws);
    ws.on('message', (data, isBinary) => {
      for (const client of members) {
        if (client !== ws && client.readyState === WebSocket.OPEN) {
          client.send(data, { binary: isBinary });
        }
      }
    });
    ws.on('close', () => {
      members.delete(ws);
      if (members.size === 0) channels.delete(channel);
    });
    ws.on('error', () => {});
  });

  server.listen(port, HOST, () => {
    process.stdout.write(`ws listening on http://${HOST}:${server.address().port}\n`);
  });
  const stop = () => {
    for (const ws of wss.clients) ws.terminate();
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
