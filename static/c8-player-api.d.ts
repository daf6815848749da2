/**
 * Type declarations for c8-player-api.js, the Cinema8 widget WebSocket API over a c8ws server.
 *
 * A script-style declaration file: reference it with
 * `/// <reference path="c8-player-api.d.ts" />` (or list it in `files`) and use the global
 * `c8PlayerApi`. The wire contract behind it is the `c8` dialect of c8ws.
 */

/**
 * Page configuration, read first for every new socket: `window.C8WS`, then `data-*` on the
 * shim's own `<script>` tag (`data-url`, `data-api-key`, `data-channel`, `data-token`,
 * `data-client-id`, `data-debug`), then the page's query string (`c8ws_api_key`,
 * `c8ws_channel`, `c8ws_token`, `c8ws_client_id`, `c8ws_debug`; never the server, and a
 * link's `c8ws_debug` posts to the page itself only). First found wins per key.
 */
interface C8WSConfig {
  /**
   * The server's base URL: `http(s)://host:port` or `ws(s)://host:port`, optionally with a path
   * prefix. The shim connects to `ws(s)://host:port[/prefix]/c8/{channel}`. Default: the origin
   * the shim itself was loaded from, then `location.origin`.
   */
  url?: string;
  /** Names the app. Default `"demo"`. */
  apiKey?: string;
  /** Channel id, `^[A-Za-z0-9_-]{1,64}$`. Default `"default"`. */
  channel?: string;
  /**
   * HS256 JWT signed with the app secret, sent as the `jwt` query parameter; required on
   * `private-…` channels and the only source of a record's `username`. A function is called
   * for every (re)connection, so an expiring token can be refreshed.
   */
  token?: string | (() => string | null | undefined);
  /** The widget instance id. When absent the server assigns one; reconnects reuse it. */
  clientId?: string;
  /** Store what this page publishes (searchable, replayable). Default `false`. */
  persistent?: boolean;
  /** Also receive your own messages. Default `true`. */
  notifySelf?: boolean;
  /** Post every frame and lifecycle change to `window.parent` (see `c8PlayerApi.DebugMessage`). */
  debug?: boolean;
}

declare namespace c8PlayerApi {
  /** The version of this shim, `"1.0.0"`. */
  const version: string;

  /** Reconnect every dropped socket now instead of waiting out its backoff. */
  function reconnectNow(): void;

  /** Same as the global `C8WSConfig`. */
  type Config = C8WSConfig;

  /** Per-socket options; they override the page configuration. */
  interface SocketOptions {
    /** Store what this socket publishes. */
    persistent?: boolean;
    /** Also receive this socket's own messages (default `true`). */
    notifySelf?: boolean;
    /** Another channel than the page's. */
    channel?: string;
  }

  /** A message in a channel, live or from a search. */
  interface Record<T = any> {
    /** Unique message id. */
    id: string;
    /** The publishing widget instance. */
    client_id: string;
    /** Milliseconds since the epoch, stamped by the server. */
    created: number;
    /** What the widget published. */
    data: T;
    /** From the publisher's JWT, else `null`. */
    username: string | null;
    /** The message's position in its channel's epoch: increasing; a publish that failed
     * leaves a gap, and a new epoch (the server lost its count) may number again from lower. */
    seq: number;
  }

  /** `id`, `seq`, `created`, `client_id`, `username`, `data` or `data.<path>` (segments `[A-Za-z0-9_]+`). */
  type Field = "id" | "seq" | "created" | "client_id" | "username" | "data" | `data.${string}`;

  type Operator = "=" | "!=" | ">" | ">=" | "<" | "<=" | "in" | "nin" | "contains" | "exists";

  /** One condition; a query's filters are ANDed (at most 20). */
  type Filter =
    | { field: Field; operator: "=" | "!=" | ">" | ">=" | "<" | "<="; value: any }
    /** A list of at most 100 values. */
    | { field: Field; operator: "in" | "nin"; value: any[] }
    /** Substring of a string field. */
    | { field: Field; operator: "contains"; value: string }
    /** Whether the field is present. */
    | { field: Field; operator: "exists"; value: boolean };

  /** A search over the channel's stored (persistent) records. Unknown keys are rejected. */
  interface Query {
    sortField?: Field;
    sortOrder?: "asc" | "desc";
    /** ≥ 0; with `groupBy` it pages the groups. */
    offset?: number;
    /** 1–1000, default 10; with `groupBy` it pages the groups. */
    limit?: number;
    filters?: Filter[];
    /** Count matching records per value of this field instead of listing them. */
    groupBy?: Field;
  }

  interface ItemsQuery extends Query {
    groupBy?: undefined;
  }

  interface GroupsQuery extends Query {
    groupBy: Field;
  }

  interface ItemsResult<T = any> {
    /** How many records match (before offset/limit). */
    total: number;
    items: Array<Record<T>>;
  }

  interface Group {
    /** The field's value, with its JSON type kept; a missing path groups as `null`. */
    value: any;
    count: number;
  }

  interface GroupsResult {
    /** How many records match. */
    total: number;
    /** Count descending, then value. */
    groups: Group[];
  }

  type SearchResult<T = any> = ItemsResult<T> | GroupsResult;

  /** Server codes (`invalid_query`, `rate_limited`, …) and the shim's own. */
  type SearchErrorCode =
    | "invalid_query"
    | "invalid_json"
    | "rate_limited"
    | "forbidden"
    /** The connection dropped after the search was sent. */
    | "disconnected"
    /** close() was called, or the server refused the connection for good. */
    | "closed"
    /** No answer within 30 s. */
    | "timeout"
    | "queue_full"
    | "too_large"
    | (string & {});

  /** What a search rejects with. */
  interface SearchError extends Error {
    code: SearchErrorCode;
  }

  /** Node-style callback; `result` is undefined when `err` is set. */
  type SearchCallback<R> = (err: SearchError | null, result: R) => void;

  type ErrorCode =
    /** The server refused the connection (fatal frame, then a terminal close); no reconnect. */
    | "refused"
    /** No connection (server down or unreachable, or turning joins away for now: 1013, 4029,
     * 1001, or any other close before the welcome that is not a refusal);
     * once per outage, while the shim keeps trying. */
    | "unreachable"
    /** A resume could not fill the gap: reload the widget's state. */
    | "recovery_failed"
    /** A publish was over the server's frame limit and was not sent. */
    | "too_large"
    /** Over 1000 publishes waiting to be sent (disconnected, or held back to the rate
     * limit); the newest was dropped. */
    | "queue_full"
    /** publish() after close(). */
    | "closed"
    /** No server URL could be worked out. */
    | "no_url"
    /** The configured URL is not usable. */
    | "bad_url"
    /** The page's token function threw; the shim tries again with backoff. */
    | "token_failed"
    | "invalid_json"
    | "unknown_command"
    | "rate_limited"
    | "not_stored"
    /** The server could not hand a publish to its broker: it was not delivered. */
    | "unavailable"
    | "forbidden"
    | (string & {});

  /** What onError receives. */
  interface ErrorInfo {
    code: ErrorCode;
    message: string;
    /** With `refused`: the close code (4001–4004, 4009, 1008; 1006 when the browser lost it).
     * With `unreachable`: 1006, or the code the server turned the join away with (1013, 4029,
     * 1001…). */
    closeCode?: number;
  }

  /** What onClose receives. */
  interface CloseInfo {
    code: number;
    reason: string;
    wasClean: boolean;
    /** `true` when the shim will reconnect by itself; `false` once the socket is done for good. */
    willReconnect: boolean;
  }

  interface ConnectionsEvent {
    /** The channel's connection count, this one included. */
    data: number;
  }

  type SocketState = "idle" | "connecting" | "open" | "waiting" | "closed";

  /**
   * One widget socket. It connects on the next task (assign handlers right after construction),
   * reconnects with jittered backoff and resumes without losing or repeating records.
   */
  interface Socket {
    /** After the server's welcome, on every successful (re)connection. */
    onOpen: ((this: Socket) => void) | null;
    /** Every record, exactly once across reconnects. */
    onMessage: ((this: Socket, record: Record) => void) | null;
    /** With the welcome's count and every change. */
    onActiveConnectionsChange: ((this: Socket, event: ConnectionsEvent) => void) | null;
    /** When an open connection drops (`willReconnect`) and once when the socket is done. */
    onClose: ((this: Socket, event: CloseInfo) => void) | null;
    /** Refusals, failed recoveries, and server errors that answer no search. */
    onError: ((this: Socket, error: ErrorInfo) => void) | null;

    /**
     * Publish `data` (anything JSON can encode) to the channel. Before the connection is open,
     * or while it is down, messages are queued and sent in order after the next welcome.
     * Throws a TypeError if `data` cannot be encoded.
     */
    publish(data: any): void;

    /** Search stored records; queued like publish until the connection is open. */
    search<T = any>(query: ItemsQuery, callback?: SearchCallback<ItemsResult<T>>): Promise<ItemsResult<T>>;
    search(query: GroupsQuery, callback?: SearchCallback<GroupsResult>): Promise<GroupsResult>;
    search<T = any>(query: Query, callback?: SearchCallback<SearchResult<T>>): Promise<SearchResult<T>>;

    /** Close for good: no reconnect; pending searches reject with `closed`; onClose follows. */
    close(): void;

    readonly state: SocketState;
    /** The widget instance id: configured, or assigned by the server at the first welcome. */
    readonly clientId: string | null;
    readonly channel: string;
    /** The last connection count received. */
    readonly connections: number;
  }

  interface SocketConstructor {
    new (options?: SocketOptions): Socket;
    (options?: SocketOptions): Socket;
    readonly prototype: Socket;
  }

  /** `new c8PlayerApi.webSocket({persistent: true})`; works without `new` too. */
  const webSocket: SocketConstructor;

  /** Listen on the widget event bus. `widgetDestroy` (emitted by the host) closes every socket. */
  function on(event: "widgetDestroy", fn: () => void): void;
  function on(event: string, fn: (...args: any[]) => void): void;
  /** Remove one listener, or all listeners of `event` when `fn` is omitted. */
  function off(event: string, fn?: (...args: any[]) => void): void;
  /** Call every listener of `event`; errors they throw are reported, not raised. */
  function emit(event: string, ...args: any[]): void;

  /** Posted to `window.parent` with `debug: true`: every frame in or out. */
  interface DebugFrame {
    c8ws: "frame";
    direction: "in" | "out";
    /** The frame's text. */
    data: string;
    /** `Date.now()` when sent or received. */
    time: number;
  }

  /** Posted to `window.parent` with `debug: true`: the socket's lifecycle. */
  interface DebugStatus {
    c8ws: "status";
    status: "connecting" | "open" | "closed" | "reconnecting";
    /** The close code (`closed`, `reconnecting`). */
    code?: number;
    /** Milliseconds until the next attempt (`reconnecting`). */
    delay?: number;
    /** The URL being opened, with any token redacted (`connecting`). */
    url?: string;
    channel: string;
    /** Tells this page's sockets apart. */
    socket: number;
  }

  /** Posted to `window.parent` with `debug: true`: a widget handler or listener threw. */
  interface DebugError {
    c8ws: "error";
    message: string;
    stack: string;
    /** Which handler threw, e.g. `onMessage`. */
    where: string;
  }

  type DebugMessage = DebugFrame | DebugStatus | DebugError;
}

interface Window {
  C8WS?: C8WSConfig;
  c8PlayerApi: typeof c8PlayerApi;
}
