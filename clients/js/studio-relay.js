// studio-relay browser client: one ES module, no dependencies, no build step.
// Speaks the relay's native JSON protocol (SPEC §5) and resumes through its
// history (SPEC §12); types and every option are documented in
// studio-relay.d.ts.
//
//   import { connect } from "./studio-relay.js";
//   const relay = connect("ws://127.0.0.1:4456/ws", {
//     subscribe: { agentId: ["dev_01"] },
//     onEvent: (event, data, meta) => render(event, data),
//     onGap: () => refetchState(),
//   });
//   await relay.subscribe({ sessionId: "s42" });

/** Close codes after which reconnecting as is would fail the same way. */
export const TERMINAL_CLOSE_CODES = Object.freeze([
  1002, // protocol error: a bug on one side
  1003, // unsupported data
  1007, // invalid payload (bad UTF-8)
  1008, // policy: token revoked on reload, or expired
  1009, // a client frame over max_client_message_bytes
]);

/**
 * A connection open this long counts as healthy: the backoff starts over
 * after it drops. One kicked sooner (say 1013 slow consumer right after a
 * big replay) keeps backing off, so a kick-reconnect loop cannot hammer the
 * relay at the first step's rate.
 */
const STABLE_AFTER_MS = 5_000;

const DEFAULTS = {
  minBackoffMs: 250,
  maxBackoffMs: 30_000,
  heartbeatMs: 0,
  connectTimeoutMs: 10_000,
};

/** An error a subscribe/unsubscribe promise rejects with, or onError receives. */
export class RelayError extends Error {
  /**
   * @param {string} code the relay's error code, or "disconnected" / "closed" / "close_code"
   * @param {string} message
   * @param {object} [detail]
   */
  constructor(code, message, detail) {
    super(message);
    this.name = "RelayError";
    this.code = code;
    if (detail !== undefined) this.detail = detail;
  }
}

/** Opens a relay connection that reconnects and resumes by itself. */
export function connect(url, options = {}) {
  return new RelayClient(url, options);
}

/** Runs a user callback; an exception is reported, not allowed to break the client. */
function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (e) {
    queueMicrotask(() => {
      throw e;
    });
  }
}

function closeQuietly(ws, reason) {
  try {
    ws.close(1000, reason);
  } catch {
    // already closing, or a reason the browser refuses
  }
}

/** `{field: "v" | ["v", …], all: true}` → [[field, value], …] and the all flag. */
function parseChange(change) {
  if (change === null || typeof change !== "object" || Array.isArray(change)) {
    throw new TypeError("a subscription is an object such as { agentId: \"a1\" } or { all: true }");
  }
  const pairs = [];
  let all = false;
  for (const [field, value] of Object.entries(change)) {
    if (field === "all") {
      if (value === true) all = true;
      else if (value !== false && value !== undefined) throw new TypeError("\"all\" must be true");
      continue;
    }
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) pairs.push([field, v]);
  }
  if (pairs.length === 0 && !all) {
    throw new TypeError("name at least one routing field or all: true");
  }
  return { pairs, all };
}

class RelayClient {
  constructor(url, options) {
    this.url = String(url);
    this.options = { ...DEFAULTS, ...options };
    /** @type {Map<string, Set<string>>} subscriptions the relay acknowledged (or the URL carried) */
    this._subs = new Map();
    this._all = false;
    if (options.subscribe) {
      const { pairs, all } = parseChange(options.subscribe);
      this._apply(true, pairs, all);
    }
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
    this._status = "closed";
    this._closed = false;
    this._socket = null;
    this._attempt = 0;
    this._retryTimer = null;
    this._heartbeatTimer = null;
    this._connectTimer = null;
    this._pingSentAt = 0;
    this._openedAt = 0;
    // History position: set from the first welcome that carries an epoch.
    this._epoch = null;
    this._offset = 0;
    this._welcomed = false; // a welcome was seen on some earlier connection
    this._resuming = false; // this connection's URL carried since=
    this._swallowGap = false; // a recovered:false welcome already called onGap
    // Subscription changes: one frame in flight at a time, because the relay
    // sends errors at once but acks through its hub, so their order against
    // each other is not fixed; one at a time, the next reply is the answer.
    this._queue = [];
    this._inFlight = null;
    this._onOnline = () => {
      if (this._retryTimer !== null) {
        clearTimeout(this._retryTimer);
        this._retryTimer = null;
        this._open();
      }
    };
    globalThis.addEventListener?.("online", this._onOnline);
    this._open();
  }

  /** "connecting" | "open" | "closed" */
  get status() {
    return this._status;
  }

  /** The current subscriptions, as the next connection's URL will carry them. */
  get subscriptions() {
    const out = {};
    for (const [field, values] of this._subs) if (values.size) out[field] = [...values];
    if (this._all) out.all = true;
    return out;
  }

  /** `{ epoch, offset }` of the last event seen (null epoch: history is off or not known yet). */
  get position() {
    return { epoch: this._epoch, offset: this._offset };
  }

  on(event, handler) {
    let set = this._handlers.get(event);
    if (!set) this._handlers.set(event, (set = new Set()));
    set.add(handler);
    return () => this.off(event, handler);
  }

  off(event, handler) {
    this._handlers.get(event)?.delete(handler);
  }

  subscribe(change) {
    return this._request("subscribe", change);
  }

  unsubscribe(change) {
    return this._request("unsubscribe", change);
  }

  /** Drops the current connection (if any) and reconnects now, resuming where it was. */
  reconnect() {
    if (this._closed) return;
    if (this._retryTimer !== null) {
      clearTimeout(this._retryTimer);
      this._retryTimer = null;
    }
    if (this._socket) this._drop({ code: 1000, reason: "reconnect" }, false);
    this._attempt = 0;
    this._open();
  }

  /** Closes for good: no reconnect; pending subscription changes reject. */
  close() {
    if (this._closed) return;
    this._closed = true;
    globalThis.removeEventListener?.("online", this._onOnline);
    if (this._retryTimer !== null) clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._socket;
    if (ws) {
      this._detach(ws);
      closeQuietly(ws, "client closed");
    }
    this._socket = null;
    this._stopTimers();
    this._rejectAll(new RelayError("closed", "the client was closed"));
    this._setStatus("closed", { code: 1000, reason: "client closed", retrying: false });
  }

  // --- connection -------------------------------------------------------

  _buildUrl() {
    const u = new URL(this.url);
    for (const [field, values] of this._subs) for (const v of values) u.searchParams.append(field, v);
    if (this._all) u.searchParams.set("all", "true");
    const token = typeof this.options.token === "function" ? this.options.token() : this.options.token;
    if (token) u.searchParams.set("token", token);
    this._resuming = this._epoch !== null;
    if (this._resuming) u.searchParams.set("since", `${this._epoch}:${this._offset}`);
    return u.toString();
  }

  _open() {
    if (this._closed) return;
    this._setStatus("connecting", { attempt: this._attempt });
    const Ws = this.options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      if (typeof Ws !== "function") throw new TypeError("no WebSocket here: pass options.WebSocket");
      ws = new Ws(this._buildUrl());
    } catch (e) {
      // A malformed URL or no WebSocket at all: retrying cannot help.
      const message = String(e?.message ?? e);
      this._closed = true;
      this._rejectAll(new RelayError("closed", message));
      call(this.options.onError, new RelayError("bad_url", message));
      this._setStatus("closed", { code: 0, reason: message, retrying: false });
      return;
    }
    this._socket = ws;
    const limit = this.options.connectTimeoutMs;
    if (limit > 0) {
      // No welcome in time (a relay that accepts but never answers): try again.
      this._connectTimer = setTimeout(() => {
        this._connectTimer = null;
        if (this._socket === ws) this._drop({ code: 1006, reason: "connect timeout" }, true);
      }, limit);
    }
    ws.onmessage = (m) => this._onMessage(m.data);
    ws.onclose = (e) => {
      this._detach(ws);
      this._down({ code: e.code, reason: e.reason }, true);
    };
    // An error is always followed by a close event; the close does the work.
    ws.onerror = () => {};
  }

  /** Abandons the current socket without waiting for its close handshake. */
  _drop(info, schedule) {
    const ws = this._socket;
    this._detach(ws);
    closeQuietly(ws, info.reason);
    this._down(info, schedule);
  }

  _detach(ws) {
    ws.onmessage = ws.onclose = null;
    // Not null: Node's `ws` throws an "error" event nobody listens to.
    ws.onerror = () => {};
    if (this._socket === ws) this._socket = null;
  }

  /** The socket is gone: reject what was pending, then retry unless terminal. */
  _down({ code, reason }, schedule) {
    this._stopTimers();
    if (this._openedAt !== 0 && Date.now() - this._openedAt >= STABLE_AFTER_MS) this._attempt = 0;
    this._openedAt = 0;
    this._swallowGap = false;
    this._rejectAll(new RelayError("disconnected", `connection closed (${code})`, { code, reason }));
    const terminal = TERMINAL_CLOSE_CODES.includes(code);
    if (terminal) {
      this._closed = true;
      globalThis.removeEventListener?.("online", this._onOnline);
      call(
        this.options.onError,
        new RelayError("close_code", `closed by the relay with ${code} ${reason || ""}`.trim(), { code, reason }),
      );
    }
    if (!schedule || this._closed) {
      this._setStatus("closed", { code, reason, retrying: !this._closed });
      return;
    }
    // Full jitter: a random delay up to the capped exponential step, so many
    // clients dropped at once by a restart do not come back in lockstep.
    const { minBackoffMs, maxBackoffMs } = this.options;
    const ceiling = Math.min(maxBackoffMs, minBackoffMs * 2 ** this._attempt);
    const delay = Math.round(Math.random() * ceiling);
    this._attempt = Math.min(this._attempt + 1, 30);
    this._setStatus("closed", { code, reason, retrying: true, retryInMs: delay });
    this._retryTimer = setTimeout(() => {
      this._retryTimer = null;
      this._open();
    }, delay);
  }

  _setStatus(status, detail) {
    this._status = status;
    call(this.options.onStatus, status, detail);
  }

  // --- frames -----------------------------------------------------------

  _onMessage(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      call(this.options.onError, new RelayError("bad_frame", "the relay sent a frame that is not JSON"));
      return;
    }
    this._pingSentAt = 0;
    switch (f?.type) {
      case "event":
        this._swallowGap = false;
        return this._onEvent(f);
      case "welcome":
        return this._onWelcome(f);
      case "gap":
        if (this._swallowGap && f.reason === "history_unavailable") {
          this._swallowGap = false;
          return;
        }
        this._swallowGap = false;
        return call(this.options.onGap, f.reason, f);
      case "subscribed":
      case "unsubscribed":
        return this._settle(null, f);
      case "error":
        if (this._inFlight) return this._settle(new RelayError(f.code, f.message, f), f);
        return call(this.options.onError, new RelayError(f.code, f.message, f));
      case "pong":
        return;
      default:
        return; // a frame type from a newer relay: ignore
    }
  }

  _onWelcome(f) {
    const resumed = this._resuming;
    const first = !this._welcomed;
    this._welcomed = true;
    this._openedAt = Date.now();
    if (this._connectTimer !== null) clearTimeout(this._connectTimer);
    this._connectTimer = null;
    if (!(resumed && f.recovered === true)) {
      // A fresh start (or a refused resume): count from where the relay is now.
      this._epoch = typeof f.epoch === "string" ? f.epoch : null;
      this._offset = typeof f.offset === "number" ? f.offset : 0;
    }
    this._setStatus("open", {
      connectionId: f.connectionId,
      recovered: resumed ? f.recovered === true : undefined,
      welcome: f,
    });
    if (this._closed) return; // onStatus closed it
    this._startHeartbeat();
    if (resumed && f.recovered !== true) {
      // The relay follows recovered:false with a gap frame: one call per incident.
      this._swallowGap = true;
      call(this.options.onGap, "history_unavailable", { type: "gap", reason: "history_unavailable", source: "history" });
    } else if (!resumed && !first) {
      // History is off on this relay: a reconnect cannot replay what was missed.
      call(this.options.onGap, "history_unavailable", { type: "gap", reason: "history_unavailable", source: "client" });
    }
    this._pump();
  }

  _onEvent(f) {
    if (typeof f.offset === "number") {
      // Belt and braces: the relay replays each missed event once, but a
      // duplicate (or a stale replay) must never reach the application.
      if (this._epoch !== null && f.offset <= this._offset) return;
      this._offset = f.offset;
    }
    const meta = { offset: f.offset };
    call(this.options.onEvent, f.event, f.data, meta);
    const set = this._handlers.get(f.event);
    if (set) for (const h of [...set]) call(h, f.data, meta);
  }

  // --- subscription changes --------------------------------------------

  _request(type, change) {
    if (this._closed) return Promise.reject(new RelayError("closed", "the client was closed"));
    let parsed;
    try {
      parsed = parseChange(change);
    } catch (e) {
      return Promise.reject(e);
    }
    return new Promise((resolve, reject) => {
      this._queue.push({ type, change, parsed, resolve, reject });
      this._pump();
    });
  }

  /** Sends the next queued change once the connection is open and nothing is in flight. */
  _pump() {
    if (this._inFlight || this._status !== "open" || !this._socket) return;
    const req = this._queue.shift();
    if (!req) return;
    this._inFlight = req;
    const frame = { type: req.type };
    for (const [k, v] of Object.entries(req.change)) if (v !== undefined && v !== false) frame[k] = v;
    this._socket.send(JSON.stringify(frame));
  }

  _settle(error, frame) {
    const req = this._inFlight;
    if (!req) return;
    this._inFlight = null;
    if (error) {
      req.reject(error);
    } else {
      this._apply(req.type === "subscribe", req.parsed.pairs, req.parsed.all);
      req.resolve(frame);
    }
    this._pump();
  }

  _apply(add, pairs, all) {
    for (const [field, value] of pairs) {
      let set = this._subs.get(field);
      if (add) {
        if (!set) this._subs.set(field, (set = new Set()));
        set.add(value);
      } else if (set) {
        set.delete(value);
        if (set.size === 0) this._subs.delete(field);
      }
    }
    if (all) this._all = add;
  }

  _rejectAll(error) {
    const pending = this._inFlight ? [this._inFlight, ...this._queue] : this._queue;
    this._inFlight = null;
    this._queue = [];
    for (const req of pending) req.reject(error);
  }

  // --- heartbeat --------------------------------------------------------

  _startHeartbeat() {
    this._stopHeartbeat();
    const every = this.options.heartbeatMs;
    if (!(every > 0)) return;
    this._heartbeatTimer = setInterval(() => {
      const ws = this._socket;
      if (!ws) return;
      // A ping unanswered for a whole interval: the path is dead even if
      // the socket does not know it yet (laptop sleep, network change).
      if (this._pingSentAt !== 0 && Date.now() - this._pingSentAt >= every) {
        this._drop({ code: 1006, reason: "heartbeat timeout" }, true);
        return;
      }
      if (this._pingSentAt === 0) {
        this._pingSentAt = Date.now();
        ws.send('{"type":"ping"}');
      }
    }, every);
  }

  _stopHeartbeat() {
    if (this._heartbeatTimer !== null) clearInterval(this._heartbeatTimer);
    this._heartbeatTimer = null;
    this._pingSentAt = 0;
  }

  _stopTimers() {
    this._stopHeartbeat();
    if (this._connectTimer !== null) clearTimeout(this._connectTimer);
    this._connectTimer = null;
  }
}
