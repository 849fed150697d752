// A real Socket.IO server publishing through @socket.io/redis-adapter, plus a
// real @socket.io/redis-emitter, driven by the Rust tests: what Claude
// Studio's app servers do when they call io.emit. Options as the first
// argument (JSON), commands as JSON lines on stdin, answers on stdout.
//
//   node sio-server.mjs '{"redis":"redis://127.0.0.1:6379","key":"socket.io"}'
//   out: {"ev":"ready","port":N}        its own clients join the rooms of ?rooms=a,b
//   in:  {"cmd":"emit","via":"adapter"|"emitter","nsp":"/","to":[…],"except":[…],"name":…,"args":[…],"id":…}
//   out: {"ev":"emitted","id":…}        after the PUBLISH was written
// A {"$bin":"<base64>"} argument (at any depth) is sent as a Buffer, and
// {"$date":ms} as a Date.
import { createServer } from "node:http";
import { createInterface } from "node:readline";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { Emitter } from "@socket.io/redis-emitter";
import { createClient } from "redis";

const { redis, key = "socket.io" } = JSON.parse(process.argv[2] ?? "{}");
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");

const pub = createClient({ url: redis });
const sub = pub.duplicate();
const emitterClient = pub.duplicate();
for (const c of [pub, sub, emitterClient]) c.on("error", (e) => out({ ev: "redis-error", message: String(e) }));
await Promise.all([pub.connect(), sub.connect(), emitterClient.connect()]);

const http = createServer();
const io = new Server(http, { adapter: createAdapter(pub, sub, { key }) });
const emitter = new Emitter(emitterClient, { key });
const joinRooms = (socket) => {
  const rooms = String(socket.handshake.query.rooms ?? "");
  for (const r of rooms.split(",").filter(Boolean)) socket.join(r);
};
io.on("connection", joinRooms);
io.of("/admin").on("connection", joinRooms);

const revive = (v) => {
  if (Array.isArray(v)) return v.map(revive);
  if (v && typeof v === "object") {
    if (typeof v.$bin === "string") return Buffer.from(v.$bin, "base64");
    if (typeof v.$date === "number") return new Date(v.$date);
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, revive(x)]));
  }
  return v;
};

const commands = createInterface({ input: process.stdin });
commands.on("line", async (line) => {
  if (!line.trim()) return;
  let c;
  try {
    c = JSON.parse(line);
  } catch (e) {
    return out({ ev: "error", message: `bad command: ${e.message}` });
  }
  if (c.cmd === "exit") process.exit(0);
  if (c.cmd !== "emit") return out({ ev: "error", message: `unknown command ${c.cmd}` });
  let target = c.via === "emitter" ? emitter.of(c.nsp ?? "/") : io.of(c.nsp ?? "/");
  if (c.to?.length) target = target.to(c.to);
  if (c.except?.length) target = target.except(c.except);
  target.emit(c.name, ...revive(c.args ?? []));
  // node-redis pipelines commands in order: a PING answered means the
  // PUBLISH before it reached Redis.
  await (c.via === "emitter" ? emitterClient : pub).ping();
  out({ ev: "emitted", id: c.id ?? null });
});
commands.on("close", () => process.exit(0));

http.listen(0, "127.0.0.1", () => out({ ev: "ready", port: http.address().port }));
