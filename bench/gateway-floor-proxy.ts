/**
 * The floor of the gateway bench: a bare Deno reverse proxy, what any proxy process costs on
 * this machine before it does any work of its own. `Deno.serve` → `fetch` to one upstream, the
 * method, path, query, headers and body passed through and the upstream's answer returned as it
 * is: no authentication, no rate limit, no transcoding, no log. Its HTTP client is set up as
 * cmd/gateway/main.ts sets up the gateway's (one keep-alive HTTP/1.1 pool from a source address),
 * and a request body is read whole before it is sent on, as the gateway sends a unary body.
 *
 *   FLOOR_UPSTREAM_URL=http://127.0.0.1:50052 FLOOR_SOURCE_ADDRESS=127.0.0.2 \
 *     deno run --allow-net --allow-env bench/gateway-floor-proxy.ts
 *
 * It prints one JSON line `{"msg":"serving","url":...}` when it listens, as the gateway does.
 */
const upstream = new URL(Deno.env.get("FLOOR_UPSTREAM_URL") ?? "");
const sourceAddress = Deno.env.get("FLOOR_SOURCE_ADDRESS") ?? "";
const client = Deno.createHttpClient({ ...(sourceAddress ? { localAddress: sourceAddress } : {}), http2: false });
/** Headers that belong to one connection and are not forwarded by any proxy (RFC 9110 §7.6.1), and Host, which fetch sets. */
const hopByHop = ["connection", "keep-alive", "transfer-encoding", "upgrade", "host"];

const server = Deno.serve(
  {
    hostname: "127.0.0.1",
    port: 0,
    onListen: ({ hostname, port }) => console.log(JSON.stringify({ msg: "serving", url: `http://${hostname}:${port}` })),
  },
  async (req) => {
    const url = new URL(req.url);
    const headers = new Headers(req.headers);
    for (const name of hopByHop) headers.delete(name);
    const body = req.body ? await req.arrayBuffer() : undefined;
    return await fetch(`${upstream.origin}${url.pathname}${url.search}`, { method: req.method, headers, body, client, signal: req.signal });
  },
);

Deno.addSignalListener("SIGTERM", () => {
  void server.shutdown().then(() => Deno.exit(0));
});
