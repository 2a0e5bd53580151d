// wspush.js: a dependency-free browser client for wspush (docs/PROTOCOL.md). Copy it next to
// your page, or import it from the server: `import { WspushClient } from "/wspush.js"`.
//
// It reconnects with capped, equal-jittered exponential backoff, resubscribes to every topic,
// and resumes each one after the last position it saw (`since`: offset and epoch), so the
// server replays what was missed; what cannot be replayed is reported as `continuitylost`. A
// push is never handed over twice nor out of order within an epoch.
//
// Liveness: the server sends protocol Pings to silent clients and browsers answer them by
// themselves, so nothing is needed for the server to keep the connection. A browser cannot
// see those Pings, though: set `heartbeatMs` to also send `{"cmd":"ping"}` and treat a
// connection as dead when nothing arrives for twice that long.
//
// Works in browsers and in Node >= 22 (Node 20 with --experimental-websocket), or with any
// WebSocket implementation passed as the `WebSocket` option.

/**
 * @typedef {{epoch: string, offset: number}} Position
 *   A place in a topic's stream: the last offset handed out in that epoch.
 *
 * @typedef {object} WspushOptions
 * @property {string} [token] The client token (`--client-token`).
 * @property {boolean} [tokenInMessage] Send the token as the first message,
 *   `{"cmd":"auth","token":T}`, rather than as `?token=` in the URL (which may end up in
 *   logs). Default: true when a token is given.
 * @property {string[]} [topics] Subscribed on every connection.
 * @property {string[]} [claims] Signed claims for private topics, sent with every subscribe.
 * @property {number} [recent] On a topic's first subscribe, replay the last K held messages.
 * @property {{initialMs?: number, maxMs?: number}} [backoff] Reconnect delays: the ceiling
 *   starts at `initialMs` (500) and doubles per failed attempt up to `maxMs` (15000); each
 *   delay is drawn uniformly between half the ceiling and the ceiling (equal jitter).
 * @property {number} [heartbeatMs] Send `{"cmd":"ping"}` this often and reconnect when
 *   nothing arrives for twice as long. 0 (the default): off.
 * @property {number} [connectTimeoutMs] Give up an attempt that has not opened by then (10000).
 * @property {typeof WebSocket} [WebSocket] The implementation (default: the global one).
 *
 * @typedef {"connecting"|"open"|"reconnecting"|"closed"} WspushState
 *
 * @typedef {object} PushDetail
 * @property {string} topic
 * @property {*} data The published JSON value.
 * @property {number} [offset] Absent when the server keeps no history.
 * @property {string} [epoch]
 *
 * @typedef {object} ContinuityLostDetail
 * @property {string} topic
 * @property {"epoch_changed"|"history_too_short"|"server_reported"|"offset_jump"} reason
 *   `epoch_changed`: the server restarted or the stream ended, nothing could be replayed;
 *   `history_too_short`: the history no longer held everything missed; `server_reported`:
 *   eviction overtook a replay; `offset_jump`: pushes were dropped on the way (the client
 *   resubscribes to fetch them from history).
 * @property {string} epoch
 * @property {number} from The first offset that will arrive; the ones before it are lost.
 */

/**
 * A reconnecting wspush client.
 *
 * @fires WspushClient#state  detail: {state: WspushState, attempt: number}
 * @fires WspushClient#open   the socket opened (detail: {reconnects})
 * @fires WspushClient#close  detail: {code, reason, willReconnect}
 * @fires WspushClient#push   detail: PushDetail
 * @fires WspushClient#continuitylost detail: ContinuityLostDetail
 * @fires WspushClient#recovered detail: {topic, from}: every message from `from` on follows
 * @fires WspushClient#subscribed detail: {topics}
 * @fires WspushClient#unsubscribed detail: {topics, reason?} (reason: the server ended them)
 * @fires WspushClient#refused detail: {topic, reason, error}: a private topic's claim was
 *   refused; the topic is dropped so it does not block the others' resubscribes
 * @fires WspushClient#authenticated the server accepted the token sent in a message
 * @fires WspushClient#error  detail: {error}: an error reply, or a message that is not JSON
 */
export class WspushClient extends EventTarget {
  /** @type {WspushState} */
  state = "closed";
  /** Completed reconnects (opens after the first). */
  reconnects = 0;
  /** `Date.now()` when the last message arrived (0: none yet). */
  lastMessageAt = 0;

  #url;
  #opts;
  /** @type {WebSocket | null} */
  #ws = null;
  #attempt = 0;
  #opened = false;
  #timer = 0;
  #heartbeat = 0;
  /** @type {Set<string>} */
  #topics;
  /** @type {Map<string, Position>} last position per topic */
  #last = new Map();
  /** @type {Map<string, Position>} sent as `since`, awaiting the acknowledgement */
  #resuming = new Map();
  /** @type {Set<string>} an unsubscribe is out to replace these subscriptions */
  #replacing = new Set();

  /**
   * @param {string} url e.g. `ws://127.0.0.1:8091/ws`
   * @param {WspushOptions} [options]
   */
  constructor(url, options = {}) {
    super();
    this.#url = url;
    this.#opts = {
      tokenInMessage: options.token !== undefined,
      claims: [],
      recent: 0,
      heartbeatMs: 0,
      connectTimeoutMs: 10000,
      ...options,
      backoff: { initialMs: 500, maxMs: 15000, ...options.backoff },
    };
    this.#topics = new Set(options.topics ?? []);
  }

  /** The last position seen per topic (a copy). @returns {Map<string, Position>} */
  get positions() {
    return new Map([...this.#last].map(([t, p]) => [t, { ...p }]));
  }

  /** Opens the connection (again, after `close()`). */
  connect() {
    if (this.state !== "closed") return;
    this.#attempt = 0;
    this.#open();
  }

  /**
   * Adds topics; sent now when open, else on the next connection.
   * @param {string[]} topics
   * @param {{claims?: string[]}} [opts] claims to add to the ones sent with every subscribe
   */
  subscribe(topics, opts = {}) {
    for (const claim of opts.claims ?? []) {
      if (!this.#opts.claims.includes(claim)) this.#opts.claims.push(claim);
    }
    const fresh = topics.filter((t) => !this.#topics.has(t));
    fresh.forEach((t) => this.#topics.add(t));
    if (fresh.length) this.#sendSubscribe(fresh);
  }

  /** @param {string[]} topics */
  unsubscribe(topics) {
    const known = topics.filter((t) => this.#topics.delete(t));
    // Forgotten: a later subscribe starts live rather than replaying what was missed.
    known.forEach((t) => this.#forget(t));
    if (known.length) this.#send({ cmd: "unsubscribe", topics: known });
  }

  /** Closes for good (until `connect()`); no reconnect. */
  close() {
    clearTimeout(this.#timer);
    const ws = this.#ws;
    this.#ws = null;
    this.#stopHeartbeat();
    if (ws) {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      ws.close(1000);
    }
    if (this.state !== "closed") {
      this.#setState("closed");
      this.#emit("close", { code: 1000, reason: "closed by the client", willReconnect: false });
    }
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #setState(state) {
    this.state = state;
    this.#emit("state", { state, attempt: this.#attempt });
  }

  #open() {
    this.#setState(this.#opened ? "reconnecting" : "connecting");
    const url = new URL(this.#url, globalThis.location?.href);
    if (this.#opts.token !== undefined && !this.#opts.tokenInMessage) {
      url.searchParams.set("token", this.#opts.token);
    }
    const Impl = this.#opts.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new Impl(url.href);
    } catch (error) {
      this.#emit("error", { error });
      this.#retry(0);
      return;
    }
    this.#ws = ws;
    const opening = setTimeout(() => ws.close(), this.#opts.connectTimeoutMs);
    ws.onopen = () => {
      clearTimeout(opening);
      if (this.#opened) this.reconnects += 1;
      this.#opened = true;
      this.#resuming.clear();
      this.#replacing.clear();
      this.lastMessageAt = Date.now();
      this.#setState("open");
      this.#emit("open", { reconnects: this.reconnects });
      if (this.#opts.token !== undefined && this.#opts.tokenInMessage) {
        // In order on the connection: the server reads it before the subscribe.
        this.#send({ cmd: "auth", token: this.#opts.token });
      }
      if (this.#topics.size) this.#sendSubscribe([...this.#topics]);
      this.#startHeartbeat();
    };
    ws.onmessage = (event) => this.#onMessage(event.data);
    ws.onerror = () => {}; // always followed by onclose, which decides
    ws.onclose = (event) => {
      clearTimeout(opening);
      if (this.#ws !== ws) return;
      this.#ws = null;
      this.#stopHeartbeat();
      this.#emit("close", { code: event.code, reason: event.reason, willReconnect: true });
      this.#retry(event.code);
    };
  }

  /** Schedules the next attempt after a connection ended with `code`. */
  #retry(code) {
    const { initialMs, maxMs } = this.#opts.backoff;
    // 1001: the server is restarting, not failing: start the schedule over. 1013: it is
    // overloaded: skip the shortest step.
    if (code === 1001) this.#attempt = 0;
    if (code === 1013) this.#attempt = Math.max(this.#attempt, 1);
    const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(this.#attempt, 16));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.#attempt += 1;
    this.#setState("reconnecting");
    this.#timer = setTimeout(() => this.#open(), delay);
  }

  #startHeartbeat() {
    const every = this.#opts.heartbeatMs;
    if (!every) return;
    this.#heartbeat = setInterval(() => {
      if (Date.now() - this.lastMessageAt > 2 * every) {
        this.#ws?.close(4000, "heartbeat timeout"); // onclose reconnects
        return;
      }
      this.#send({ cmd: "ping" });
    }, every);
  }

  #stopHeartbeat() {
    clearInterval(this.#heartbeat);
  }

  #send(message) {
    if (this.#ws?.readyState === 1) this.#ws.send(JSON.stringify(message));
  }

  /** A subscribe for `topics`, resuming those with a known position. */
  #sendSubscribe(topics) {
    const message = { cmd: "subscribe", topics };
    const since = {};
    let resumes = false;
    for (const topic of topics) {
      const position = this.#last.get(topic);
      if (!position) continue;
      since[topic] = { offset: position.offset, epoch: position.epoch };
      this.#resuming.set(topic, position);
      resumes = true;
    }
    if (resumes) message.since = since;
    if (this.#opts.claims.length) message.claims = this.#opts.claims;
    if (this.#opts.recent) message.recent = this.#opts.recent;
    this.#send(message);
  }

  #forget(topic) {
    this.#last.delete(topic);
    this.#resuming.delete(topic);
    this.#replacing.delete(topic);
  }

  #lost(topic, epoch, from, reason) {
    this.#emit("continuitylost", { topic, epoch, from, reason });
  }

  #onMessage(text) {
    this.lastMessageAt = Date.now();
    let m;
    try {
      m = JSON.parse(text);
    } catch (error) {
      this.#emit("error", { error: `not JSON: ${String(text).slice(0, 100)}` });
      return;
    }
    // A message the server sends only to a working connection: reset the backoff.
    if (m.cmd !== "error") this.#attempt = 0;
    switch (m.cmd) {
      case "push":
        return this.#onPush(m);
      case "subscribed":
        this.#onSubscribed(m.topics ?? [], m.streams);
        return this.#emit("subscribed", { topics: m.topics ?? [] });
      case "unsubscribed":
        if (m.reason) {
          // The server ended them (a claim expired): they are no longer ours.
          m.topics.forEach((t) => (this.#topics.delete(t), this.#forget(t)));
        } else {
          m.topics.forEach((t) => this.#replacing.delete(t));
        }
        return this.#emit("unsubscribed", { topics: m.topics, reason: m.reason });
      case "continuity_lost":
        return this.#onContinuityLost(m.topic, m.epoch, m.from);
      case "authenticated":
        return this.#emit("authenticated", {});
      case "pong":
        return;
      case "error":
        if (m.topic && m.reason) {
          // The same claim would be refused again, and with it every other topic.
          this.#topics.delete(m.topic);
          this.#forget(m.topic);
          return this.#emit("refused", { topic: m.topic, reason: m.reason, error: m.error });
        }
        return this.#emit("error", { error: m.error });
    }
  }

  #onPush({ topic, data, offset, epoch }) {
    if (this.#replacing.has(topic)) return; // the replay brings it again, in order
    if (!this.#topics.has(topic)) return; // in flight when we unsubscribed
    const deliver = () => this.#emit("push", { topic, data, offset, epoch });
    // No history on the server: no positions, every push is delivered.
    if (offset === undefined || epoch === undefined) return deliver();
    const last = this.#last.get(topic);
    if (!last) {
      this.#last.set(topic, { epoch, offset });
      return deliver();
    }
    if (last.epoch !== epoch) {
      this.#last.set(topic, { epoch, offset });
      this.#lost(topic, epoch, offset, "epoch_changed");
      return deliver();
    }
    if (offset <= last.offset) return; // already handed out
    if (offset === last.offset + 1) {
      last.offset = offset;
      return deliver();
    }
    // Pushes were dropped on the way: subscribe again after the last one seen. The server
    // honours `since` only on a fresh subscription, hence the unsubscribe first.
    this.#lost(topic, epoch, last.offset + 1, "offset_jump");
    this.#replacing.add(topic);
    this.#send({ cmd: "unsubscribe", topics: [topic] });
    this.#sendSubscribe([topic]);
  }

  #onSubscribed(topics, streams) {
    for (const topic of topics) {
      if (this.#replacing.has(topic)) continue; // acknowledges the subscribe being replaced
      const since = this.#resuming.get(topic);
      this.#resuming.delete(topic);
      const ack = streams?.[topic];
      if (!ack?.epoch) continue; // no history: no positions
      if (since && ack.recovered === true) {
        this.#emit("recovered", { topic, from: since.offset + 1 });
      } else if (since && ack.recovered === false) {
        const sameEpoch = ack.epoch === since.epoch;
        const from = sameEpoch
          ? Math.max(ack.from ?? since.offset + 1, since.offset + 1)
          : (ack.from ?? ack.offset + 1);
        this.#last.set(topic, { epoch: ack.epoch, offset: from - 1 });
        this.#lost(topic, ack.epoch, from, sameEpoch ? "history_too_short" : "epoch_changed");
      } else if (!since && !this.#last.has(topic)) {
        // Pushes continue after the acknowledged offset (or from `from`, with `recent`).
        const after = ack.from !== undefined ? ack.from - 1 : ack.offset;
        this.#last.set(topic, { epoch: ack.epoch, offset: after });
      }
    }
  }

  #onContinuityLost(topic, epoch, from) {
    if (this.#replacing.has(topic)) return; // about the old subscription
    const last = this.#last.get(topic);
    const after = last?.epoch === epoch ? Math.max(from - 1, last.offset) : from - 1;
    this.#last.set(topic, { epoch, offset: after });
    this.#lost(topic, epoch, from, "server_reported");
  }
}
