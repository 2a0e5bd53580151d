// Drives src/app/static/wspush.js against a real server for tests/page.rs: connects to the URL
// given as argv[2], subscribes to argv[3], and prints every event as one JSON line on stdout.
// The Rust test publishes, cuts and restarts; it ends this script by publishing {"end":true}.
// Bounded: exits with {"event":"timeout"} after 60 s.
import { WspushClient } from "../../src/app/static/wspush.js";

const [url, topic] = process.argv.slice(2);
const print = (event, detail = {}) => console.log(JSON.stringify({ event, ...detail }));
const timeout = setTimeout(() => {
  print("timeout");
  process.exit(2);
}, 60_000);

// Node 22 has a global WebSocket (20 with --experimental-websocket); an older Node uses
// Debian's node-ws.
const WebSocket =
  globalThis.WebSocket ?? (await import("/usr/share/nodejs/ws/wrapper.mjs")).WebSocket;

const client = new WspushClient(url, {
  WebSocket,
  topics: [topic],
  // Long enough that the outage's publishes land before the reconnect.
  backoff: { initialMs: 400, maxMs: 800 },
});
client.addEventListener("state", (e) => print("state", { state: e.detail.state }));
client.addEventListener("subscribed", (e) => print("subscribed", e.detail));
client.addEventListener("close", (e) => print("close", { code: e.detail.code }));
client.addEventListener("recovered", (e) => print("recovered", e.detail));
client.addEventListener("continuitylost", (e) => print("continuitylost", e.detail));
client.addEventListener("error", (e) => print("error", { error: String(e.detail.error) }));
client.addEventListener("push", (e) => {
  print("push", e.detail);
  if (e.detail.data?.end) {
    clearTimeout(timeout);
    client.close();
    print("done", { reconnects: client.reconnects });
  }
});
client.connect();
