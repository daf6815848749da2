#!/usr/bin/env node
// Peer server for bench/fanout.py: socket.io 4 with rooms, the idiomatic way to fan out with it.
// A client names its channel in the handshake query (`?channel=NAME`) and is joined to that room;
// every `message` event it emits is re-emitted to the rest of the room
// (`socket.to(room).emit`), which socket.io encodes once per broadcast. WebSocket transport only
// (no HTTP long-polling), no compression: the same wire as the other servers.
//
// Run: `node socketio_server.js [--port 0]`; prints `socket.io listening on
// http://127.0.0.1:PORT` once ready; SIGTERM or SIGINT stops it.
'use strict';

const http = require('node:http');
const { Server } = require('socket.io');

const HOST = '127.0.0.1';
const MAX_MESSAGE_BYTES = 1024 * 1024;

function main() {
  const portFlag = process.argv.indexOf('--port');
  const port = portFlag > 0 ? Number(process.argv[portFlag + 1]) : 0;
  const server = http.createServer();
  const io = new Server(server, {
    transports: ['websocket'],
    perMessageDeflate: false,
    maxHttpBufferSize: MAX_MESSAGE_BYTES,
    serveClient: false,
  });

  io.on('connection', (socket) => {
    const room = String(socket.handshake.query.channel || '');
    socket.join(room);
    socket.on('message', (data) => {
      socket.to(room).emit('message', data);
    });
  });

  server.listen(port, HOST, () => {
    process.stdout.write(`socket.io listening on http://${HOST}:${server.address().port}\n`);
  });
  const stop = () => {
    io.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main();
