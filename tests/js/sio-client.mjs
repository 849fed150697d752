// A scripted socket.io-client the Rust tests drive: options as the first
// argument (JSON), commands as JSON lines on stdin, what happens as JSON
// lines on stdout. Exits on stdin EOF or {"cmd":"exit"}.
//
//   node sio-client.mjs '{"url":"http://127.0.0.1:4456","opts":{"query":{"agentId":"a1"}}}'
//   in:  {"cmd":"emitWithAck","id":1,"name":"subscribe","args":[{"agentId":"x"}]}
//        {"cmd":"emit","name":"…","args":[…]}  {"cmd":"engine-close"}  {"cmd":"close"}
//   out: {"ev":"ready"} {"ev":"connect","id":…,"pid":…,"transport":…,"recovered":…}
//        {"ev":"upgrade","transport":"websocket"} {"ev":"event","name":…,"args":[…]}
//        {"ev":"ack","id":1,"args":[…]} {"ev":"connect_error","message":…,"data":…}
//        {"ev":"disconnect","reason":…} {"ev":"reconnect_attempt","n":…}
import { io } from "socket.io-client";
import { createInterface } from "node:readline";

// exitOnEof: false keeps it running with no commands (the demo).
const { url, opts = {}, exitOnEof = true } = JSON.parse(process.argv[2] ?? "{}");
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const socket = io(url, { forceNew: true, ...opts });

socket.on("connect", () =>
  // _pid is socket.io-client's recovery id (private, read for the tests).
  out({ ev: "connect", id: socket.id, pid: socket._pid ?? null, transport: socket.io.engine.transport.name, recovered: socket.recovered }));
socket.io.on("open", () => {
  socket.io.engine.on("upgrade", (t) => out({ ev: "upgrade", transport: t.name }));
});
socket.on("connect_error", (e) => out({ ev: "connect_error", message: e.message, data: e.data ?? null }));
socket.on("disconnect", (reason) => out({ ev: "disconnect", reason }));
socket.io.on("reconnect_attempt", (n) => out({ ev: "reconnect_attempt", n }));
// Binary arguments are shown as {"$bin":"<base64>"}, which JSON can carry.
const tag = (v) => {
  if (v instanceof ArrayBuffer) return { $bin: Buffer.from(v).toString("base64") };
  if (ArrayBuffer.isView(v)) return { $bin: Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString("base64") };
  if (Array.isArray(v)) return v.map(tag);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, tag(x)]));
  return v;
};
socket.onAny((name, ...args) => out({ ev: "event", name, args: tag(args) }));

const commands = createInterface({ input: process.stdin });
commands.on("line", async (line) => {
  if (!line.trim()) return;
  let c;
  try {
    c = JSON.parse(line);
  } catch (e) {
    return out({ ev: "error", message: `bad command: ${e.message}` });
  }
  switch (c.cmd) {
    case "emit":
      socket.emit(c.name, ...(c.args ?? []));
      break;
    case "emitWithAck":
      try {
        const reply = await socket.timeout(c.timeout ?? 10000).emitWithAck(c.name, ...(c.args ?? []));
        out({ ev: "ack", id: c.id, args: [reply] });
      } catch (e) {
        out({ ev: "ack", id: c.id, error: e.message });
      }
      break;
    case "engine-close":
      socket.io.engine.close();
      break;
    case "close":
      socket.disconnect();
      break;
    case "exit":
      socket.disconnect();
      process.exit(0);
    default:
      out({ ev: "error", message: `unknown command ${c.cmd}` });
  }
});
commands.on("close", () => {
  if (!exitOnEof) return;
  socket.disconnect();
  process.exit(0);
});
out({ ev: "ready" });
