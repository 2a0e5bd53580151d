// A Node `ws` subscriber for tests/browser.rs, with no application heartbeat.
//
// usage: node liveness_client.js URL TOPIC
//
// Subscribes to TOPIC, prints `SUBSCRIBED` once acknowledged and `PUSH <data as JSON>` for every
// push, and exits 1 with `CLOSED <code> <reason>` when the connection ends. `ws` never pings by
// itself and answers the server's Pings on its own: only those keep the connection alive.
"use strict";
const WebSocket = require("ws");

const [url, topic] = process.argv.slice(2);
const ws = new WebSocket(url);
ws.on("open", () => ws.send(JSON.stringify({ topics: [topic] })));
ws.on("message", (raw) => {
  const message = JSON.parse(raw.toString());
  if (message.cmd === "subscribed") console.log("SUBSCRIBED");
  else if (message.cmd === "push" && message.topic === topic)
    console.log("PUSH", JSON.stringify(message.data));
});
ws.on("error", (error) => console.log("ERROR", error.message));
ws.on("close", (code, reason) => {
  console.log("CLOSED", code, reason.toString());
  process.exit(1);
});
