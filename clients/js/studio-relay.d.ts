// Types for studio-relay.js: the browser client of studio-relay's native
// WebSocket protocol (SPEC §5) with resume through its history (SPEC §12).

/**
 * Subscriptions: routing field → one value or several (`agentId`,
 * `sessionId`, or any field the relay's `[routing]` config names), and/or
 * `all: true` for the firehose. Values are strings, as the relay wants them.
 *
 * @example { agentId: ["dev_01", "dev_02"], sessionId: "s1" }
 * @example { all: true }
 */
export type Subscriptions = {
  /** The firehose: every event (refused by a relay with `allow_firehose = false`). */
  all?: boolean;
} & {
  [field: string]: string | string[] | boolean | undefined;
};

/** The connection's state, as reported to {@link ConnectOptions.onStatus}. */
export type Status = "connecting" | "open" | "closed";

/** What {@link ConnectOptions.onStatus} gets with each status. */
export interface StatusDetail {
  /**
   * "connecting": failed attempts in a row so far (0 for the first); it
   * starts over once a connection has stayed open for 5 s, or on reconnect().
   */
  attempt?: number;
  /** "open": the relay's id for this connection. */
  connectionId?: string;
  /**
   * "open": `true` when the relay replayed what was missed since the last
   * event seen, `false` when it could not (then `onGap` is called), absent
   * when this connection did not try to resume (the first one, or history off).
   */
  recovered?: boolean;
  /** "open": the relay's welcome frame as received. */
  welcome?: WelcomeFrame;
  /** "closed": the WebSocket close code (1006 when the socket failed or a handshake was refused). */
  code?: number;
  /** "closed": the close reason the relay gave, if any. */
  reason?: string;
  /** "closed": whether the client will connect again by itself. */
  retrying?: boolean;
  /** "closed" while retrying: the delay before the next attempt. */
  retryInMs?: number;
}

/** Passed with every event. */
export interface EventMeta {
  /** The event's position in the relay's history (absent when history is off). */
  offset?: number;
}

/** The relay's first frame on a connection (SPEC §5, §12). */
export interface WelcomeFrame {
  type: "welcome";
  connectionId: string;
  version: string;
  subscriptions: Record<string, string[]>;
  all: boolean;
  /** The relay process's history epoch (history on only). */
  epoch?: string;
  /** The last offset routed before this welcome (history on only). */
  offset?: number;
  /** Only when the URL asked to resume with `since=`. */
  recovered?: boolean;
}

/** A `gap` frame: events were missed, refetch state. */
export interface GapFrame {
  type: "gap";
  /**
   * `redis_reconnected`, `nats_reconnected` (a source was interrupted),
   * `history_unavailable` (a resume the relay could not honour).
   */
  reason: string;
  /**
   * `redis`, `nats`, `history`; `client` when the client itself knows it
   * missed events (it reconnected to a relay with history off).
   */
  source?: string;
}

/** An ack (`subscribed` / `unsubscribed`), echoing the fields asked for. */
export interface AckFrame {
  type: "subscribed" | "unsubscribed";
  [field: string]: unknown;
}

/**
 * Rejections and errors. `code` is the relay's error code (`unknown_field`,
 * `bad_request`, `too_many_subscriptions`, `firehose_disabled`, `forbidden`,
 * …) or one of the client's own: `disconnected` (the connection went away
 * before the answer), `closed` (the client was closed), `close_code` (the
 * relay closed with a terminal code, see {@link TERMINAL_CLOSE_CODES}),
 * `bad_url`, `bad_frame`.
 */
export declare class RelayError extends Error {
  readonly name: "RelayError";
  readonly code: string;
  /** The error frame, or `{ code, reason }` of a close. */
  readonly detail?: unknown;
  constructor(code: string, message: string, detail?: unknown);
}

/**
 * Close codes after which the client does not reconnect, because retrying
 * as is would fail the same way: 1002 protocol error, 1003 unsupported
 * data, 1007 invalid payload, 1008 policy (token revoked on reload or
 * expired), 1009 client frame too big. Every other code is retried: 1000
 * idle timeout, 1001 relay shutting down, 1006 network failure or handshake
 * refused, 1011 internal error, 1013 slow consumer.
 */
export declare const TERMINAL_CLOSE_CODES: readonly number[];

export interface ConnectOptions {
  /** Initial subscriptions, put in the URL of the first connection. */
  subscribe?: Subscriptions;
  /**
   * Sent as `?token=`. A function is called before every connection attempt,
   * so a refreshed token is used on reconnect.
   */
  token?: string | (() => string | undefined);
  /**
   * Every event, once, in the relay's order: `event` is the channel with
   * the pattern's prefix removed (`"agent:message"`), `data` the published JSON.
   */
  onEvent?: (event: string, data: unknown, meta: EventMeta) => void;
  /**
   * Events were missed and will not be replayed: refetch state. Called for
   * a `gap` frame, and once (not twice) when a resume was refused
   * (`recovered:false` and the `history_unavailable` gap that follows it).
   */
  onGap?: (reason: string, frame: GapFrame) => void;
  /** Every status change; "open" means the welcome arrived and the subscriptions are live. */
  onStatus?: (status: Status, detail: StatusDetail) => void;
  /**
   * What has no promise to reject: an error frame nobody waited for, a
   * terminal close code (the client then stays closed), a frame that is not JSON.
   */
  onError?: (error: RelayError) => void;
  /**
   * First reconnect delay's ceiling in ms (default 250); doubles per attempt
   * in a row (a connection closed within 5 s of its welcome counts as failed).
   */
  minBackoffMs?: number;
  /** Cap of the reconnect delay in ms (default 30000). Each delay is random in [0, ceiling]. */
  maxBackoffMs?: number;
  /**
   * Every `heartbeatMs` send `{"type":"ping"}` when no ping is out, and
   * reconnect when one has gone unanswered (no frame at all) for as long.
   * Default 0: off. The relay pings every client and browsers answer by
   * themselves, so the relay never closes a browser as idle; this option
   * is for noticing a dead path (sleep, network change) sooner on the client.
   */
  heartbeatMs?: number;
  /**
   * Give up on an attempt whose welcome has not arrived within this many ms
   * (a relay that accepts but never answers) and retry with backoff.
   * Default 10000; 0: wait as long as the browser does.
   */
  connectTimeoutMs?: number;
  /** The WebSocket constructor (default `globalThis.WebSocket`: browsers, Node ≥ 22; for older Node, `ws`'s `WebSocket`). */
  WebSocket?: new (url: string) => WebSocket;
}

export interface RelayClient {
  /** The current status. */
  readonly status: Status;
  /** The acknowledged subscriptions, as the next connection's URL will carry them. */
  readonly subscriptions: Record<string, string[]> & { all?: true };
  /** Where a resume would start: the relay's epoch (null: unknown or history off) and the last offset seen. */
  readonly position: { epoch: string | null; offset: number };
  /** Calls `handler` for every event named `event` (after `onEvent`); returns a function that removes it. */
  on(event: string, handler: (data: unknown, meta: EventMeta) => void): () => void;
  /** Removes a handler added with {@link on}. */
  off(event: string, handler: (data: unknown, meta: EventMeta) => void): void;
  /**
   * Adds subscriptions. Resolves with the relay's ack once they are live;
   * rejects with a {@link RelayError} on an error frame (nothing changes) or
   * when the connection goes away first (`disconnected`: nothing changes, so
   * the next connection does not carry it; call again). Sent once the
   * connection is open, one change at a time, in call order.
   */
  subscribe(change: Subscriptions): Promise<AckFrame>;
  /** Removes subscriptions (`{ all: true }`: firehose off); as {@link subscribe}. */
  unsubscribe(change: Subscriptions): Promise<AckFrame>;
  /** Drops the current connection and connects again now, resuming from the last event seen. */
  reconnect(): void;
  /** Closes for good: no more reconnects; pending changes reject with `closed`. */
  close(): void;
}

/**
 * Connects to a relay's `/ws` and stays connected: reconnects with capped
 * exponential backoff and full jitter, carries the current subscriptions
 * and `since=<epoch>:<offset>` in every new URL, so a relay with history
 * replays what was missed (each event once, in order); when it cannot,
 * `onGap` is called.
 *
 * @param url `ws://host:port/ws` or `wss://…` (extra query parameters are kept)
 *
 * @example
 * const relay = connect("ws://127.0.0.1:4456/ws", {
 *   subscribe: { agentId: ["dev_01"] },
 *   onEvent: (event, data) => render(event, data),
 *   onGap: () => refetchState(),
 * });
 * relay.on("message:new", (data) => append(data));
 * await relay.subscribe({ sessionId: "s42" });
 */
export declare function connect(url: string | URL, options?: ConnectOptions): RelayClient;
