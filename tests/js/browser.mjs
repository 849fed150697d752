// Headless Debian Chromium (through playwright-core) opens a page served
// here that connects to the relay with socket.io-client's default options;
// everything the page logs is printed as JSON lines on stdout.
//
//   node browser.mjs '{"relay":"http://127.0.0.1:4456","query":{"agentId":"a1"}}'
//   out: {"ev":"page","origin":"http://127.0.0.1:PORT"} then the page's log
//        ({"ev":"connect",…}, {"ev":"upgrade",…}, {"ev":"event","name":…,"args":[…]}).
// Exits on stdin EOF.
import { chromium } from "playwright-core";
import { createServer } from "node:http";
import { readFileSync } from "node:fs";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const { relay, query = {} } = JSON.parse(process.argv[2] ?? "{}");
const out = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const files = {
  "/page.html": ["text/html", readFileSync(join(here, "page.html"))],
  "/socket.io.min.js": [
    "text/javascript",
    readFileSync(join(here, "node_modules/socket.io-client/dist/socket.io.min.js")),
  ],
};
const server = createServer((req, res) => {
  const f = files[new URL(req.url, "http://x").pathname];
  if (!f) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": f[0] }).end(f[1]);
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const origin = `http://127.0.0.1:${server.address().port}`;

// playwright gives every launch a fresh, temporary profile of its own.
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  // Root in CI: no sandbox; the closed network: no background traffic.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const shutdown = async () => {
  await browser.close().catch(() => {});
  server.close();
  process.exit(0);
};
process.stdin.on("end", shutdown);
process.stdin.resume();

const page = await browser.newPage();
page.on("pageerror", (e) => out({ ev: "pageerror", message: e.message }));
const url = `${origin}/page.html?relay=${encodeURIComponent(relay)}&query=${encodeURIComponent(JSON.stringify(query))}`;
await page.goto(url);
out({ ev: "page", origin });
let seen = 0;
for (;;) {
  const log = await page.evaluate(() => window.__log).catch(() => []);
  for (; seen < log.length; seen++) out(log[seen]);
  await new Promise((r) => setTimeout(r, 20));
}
