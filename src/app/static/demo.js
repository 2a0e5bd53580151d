// The demo page's script (/demo.js): one WspushClient, its events rendered into the ids the
// comment at the top of index.html lists.
import { WspushClient } from "/wspush.js";

const MAX_PUSHES = 200;
const MAX_NOTICES = 50;
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const scheme = location.protocol === "https:" ? "wss:" : "ws:";
$("url").value = params.get("url") ?? `${scheme}//${location.host}${params.get("path") ?? "/ws"}`;
$("token").value = params.get("token") ?? "";
if (params.get("topic")) $("topic").value = params.get("topic");

/** Topics wanted, kept across a reconnect with another URL or token. */
const topics = new Set([$("topic").value]);
let client = null;
let pushCount = 0;

function item(parent, attrs, text, limit, first = true) {
  const li = document.createElement("li");
  for (const [k, v] of Object.entries(attrs)) li.dataset[k] = v;
  if (text !== undefined) li.textContent = text;
  parent.insertBefore(li, first ? parent.firstChild : null);
  while (parent.children.length > limit) parent.lastChild.remove();
  return li;
}

function notice(kind, text, topic) {
  const attrs = topic === undefined ? { kind } : { kind, topic };
  item($("notices"), attrs, `${new Date().toLocaleTimeString()} ${text}`, MAX_NOTICES);
}

function renderTopics() {
  $("topics").replaceChildren();
  for (const t of topics) item($("topics"), { topic: t }, t, Infinity, false);
}

function connect() {
  client?.close();
  const token = $("token").value;
  client = new WspushClient($("url").value, {
    topics: [...topics],
    ...(token ? { token } : {}),
    backoff: { initialMs: 500, maxMs: 10000 },
  });
  client.addEventListener("state", (e) => {
    $("state").textContent = e.detail.state;
    $("state").dataset.state = e.detail.state;
    $("reconnects").textContent = String(client.reconnects);
  });
  client.addEventListener("close", (e) => {
    const { code, reason, willReconnect } = e.detail;
    notice("close", `closed (${code}${reason ? `: ${reason}` : ""})${willReconnect ? ", reconnecting" : ""}`);
  });
  client.addEventListener("push", (e) => {
    const { topic, data, offset } = e.detail;
    pushCount += 1;
    $("push-count").textContent = String(pushCount);
    const li = item($("pushes"), { topic, offset: offset ?? "" }, undefined, MAX_PUSHES);
    for (const [cls, text] of [
      ["topic", topic],
      ["offset", offset === undefined ? "" : `#${offset}`],
      ["time", new Date().toLocaleTimeString()],
      ["data", JSON.stringify(data)],
    ]) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      li.append(span);
    }
  });
  client.addEventListener("recovered", (e) =>
    notice("recovered", `${e.detail.topic}: recovered, nothing missed since #${e.detail.from}`, e.detail.topic));
  client.addEventListener("continuitylost", (e) => {
    const { topic, reason, from } = e.detail;
    notice("continuitylost", `${topic}: continuity lost (${reason}), continuing at #${from}`, topic);
  });
  client.addEventListener("refused", (e) => {
    topics.delete(e.detail.topic);
    renderTopics();
    notice("refused", `${e.detail.topic}: refused (${e.detail.reason})`, e.detail.topic);
  });
  client.addEventListener("unsubscribed", (e) => {
    if (!e.detail.reason) return;
    e.detail.topics.forEach((t) => topics.delete(t));
    renderTopics();
    notice("refused", `${e.detail.topics.join(", ")}: ended by the server (${e.detail.reason})`);
  });
  client.addEventListener("error", (e) => notice("error", `error: ${e.detail.error}`));
  client.connect();
}

$("connection").addEventListener("submit", (e) => {
  e.preventDefault();
  connect();
});
$("disconnect").addEventListener("click", () => client?.close());
$("topic-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const topic = $("topic").value.trim();
  if (!topic) return;
  topics.add(topic);
  client?.subscribe([topic]);
  renderTopics();
});
$("unsubscribe").addEventListener("click", () => {
  const topic = $("topic").value.trim();
  topics.delete(topic);
  client?.unsubscribe([topic]);
  renderTopics();
});
setInterval(() => {
  const at = client?.lastMessageAt;
  $("last-message").textContent = at ? `${Math.round((Date.now() - at) / 1000)} s ago` : "never";
}, 1000);

renderTopics();
connect();
