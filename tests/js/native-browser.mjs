// Headless Debian Chromium (through playwright-core) opens a page served
// here that imports the real clients/js/studio-relay.js and connects to the
// relay; the page's log is printed as JSON lines on stdout, and each stdin
// line is a command for the page.
//
//   node native-browser.mjs '{"relay":"ws://127.0.0.1:4456/ws","opts":{"subscribe":{"agentId":"a1"}}}'
//   out: {"ev":"page","origin":…}, then {"ev":"status",…}, {"ev":"event","name":…,"data":…,"offset":N},
//        {"ev":"gap",…}, {"ev":"resolved"|"rejected","id":…}
//   in:  {"id":1,"cmd":"subscribe"|"unsubscribe","arg":{…}} | {"id":2,"cmd":"reconnect"|"close"}
//        | {"id":3,"cmd":"offline","arg":true|false} (the browser context's network)
// Exits on stdin EOF.
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

const here = dirname(fileURLToPath(import.meta.url));
const { relay, opts = {} } = JSON.parse(process.argv[2] ?? "{}");
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
// Read on every request, so the page always runs the client as it is on disk.
const files = {
  "/native-page.html": ["text/html", join(here, "native-page.html")],
  "/studio-relay.js": ["text/javascript", join(here, "../../clients/js/studio-relay.js")],
};
const server = createServer((req, res) => {
  const f = files[new URL(req.url, "http://x").pathname];
  if (!f) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": f[0], "cache-control": "no-store" }).end(readFileSync(f[1]));
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = await browser.newPage();
page.on("pageerror", (e) => out({ ev: "pageerror", message: e.message }));
page.on("console", (m) => {
  if (m.type() === "error") out({ ev: "console", text: m.text() });
});
const url = `${origin}/native-page.html?relay=${encodeURIComponent(relay)}&opts=${encodeURIComponent(JSON.stringify(opts))}`;
await page.goto(url);
out({ ev: "page", origin });

let stopping = false;
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const c = JSON.parse(line);
  // Emulated offline stalls an open localhost WebSocket in Chromium (no
  // close event, nothing delivered): the dead path a heartbeat must notice.
  if (c.cmd === "offline") {
    page.context().setOffline(c.arg).then(() => out({ ev: "done", id: c.id }));
    return;
  }
  page.evaluate((c) => window.__cmd(c), c).catch((e) => out({ ev: "pageerror", message: String(e) }));
});
lines.on("close", async () => {
  stopping = true;
  await browser.close().catch(() => {});
  server.close();
  process.exit(0);
});

// Take what the page logged since the last look (splice: each line once).
while (!stopping) {
  const log = await page.evaluate(() => (window.__log ? window.__log.splice(0) : [])).catch(() => []);
  for (const e of log) out(e);
  await new Promise((r) => setTimeout(r, 20));
}
