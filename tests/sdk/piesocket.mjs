// The real piesocket-js SDK against c8ws: two members with presence in one channel; bob
// publishes an event that ann receives, and each sees the other in its member list.
// Usage: node --experimental-websocket piesocket.mjs PORT CHANNEL  (prints one JSON line)
import PieSocket from "piesocket-js";

const [port, channel] = process.argv.slice(2);
const deadline = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: "timed out" }));
  process.exit(1);
}, 15000);

function client(user) {
  return new PieSocket({
    clusterDomain: `127.0.0.1:${port}`, apiKey: "demo", presence: true, userId: user,
    notifySelf: false, consoleLogs: false,
  });
}

function until(predicate) {
  return new Promise((resolve) => {
    const check = setInterval(() => {
      if (predicate()) { clearInterval(check); resolve(); }
    }, 20);
  });
}

const ann = await client("ann").subscribe(channel);
const bob = await client("bob").subscribe(channel);
const received = [];
ann.listen("chat", (data, meta) => received.push({ data, meta }));
await until(() => ann.members.length === 2 && bob.members.length === 2);
bob.publish("chat", { text: "hello from bob" }, { sent: "by sdk" });
await until(() => received.length === 1);
clearTimeout(deadline);
console.log(JSON.stringify({
  ok: true,
  received,
  annMembers: ann.members.map((m) => m.user).sort(),
  bobMembers: bob.members.map((m) => m.user).sort(),
}));
process.exit(0);
