/**
 * `grpc.health.v1.Health` (Check, Watch, List) backed by an in-memory status table that the
 * server's readiness code drives.
 *
 * The service name "" is the status of the server as a whole. Watch follows the protocol: it
 * sends the current status at once (SERVICE_UNKNOWN for a service not known yet, without ending
 * the call), then every change, until the client goes away or `close()` ends it.
 */
import { Code, ConnectError, type ConnectRouter, type HandlerContext } from "@connectrpc/connect";
import { create } from "@bufbuild/protobuf";
import {
  Health,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
} from "../../gen/grpc/health/v1/health_pb.js";

/** What a service can report: it answers requests or it does not. */
export type HealthStatus = "SERVING" | "NOT_SERVING";

/** Options of {@link createHealth}. */
export interface HealthOptions {
  /** Services known from the start; each begins with `status`, like "" itself. */
  services?: string[];
  /** The starting status; grpc-go starts SERVING, a server that warms up may start NOT_SERVING. */
  status?: HealthStatus;
}

/** The health service of one server and the handle its readiness code uses. */
export interface HealthServer {
  /** Serves grpc.health.v1.Health on the router. */
  register(router: ConnectRouter): void;
  /** Sets one service's status ("" is the whole server); watchers of it see the change. */
  setStatus(service: string, status: HealthStatus): void;
  /** Sets "" and every known service to the same status. */
  setAll(status: HealthStatus): void;
  /**
   * For graceful shutdown: reports NOT_SERVING everywhere, ends every Watch so the HTTP/2
   * server can drain, and ignores later updates.
   */
  close(): void;
}

// grpc-go answers List with RESOURCE_EXHAUSTED above this many services; so do we.
const maxListedServices = 100;

/** Creates the health service; see {@link HealthServer}. */
export function createHealth(options: HealthOptions = {}): HealthServer {
  const initial = options.status ?? "SERVING";
  const statuses = new Map<string, HealthStatus>([["", initial]]);
  for (const service of options.services ?? []) statuses.set(service, initial);
  let closed = false;
  // Replaced on every change: a watcher waits on the one current when it last looked.
  let changed = createSignal();

  const announce = (): void => {
    changed.fire();
    changed = createSignal();
  };
  const current = (service: string): ServingStatus => {
    const status = statuses.get(service);
    return status === undefined ? ServingStatus.SERVICE_UNKNOWN : ServingStatus[status];
  };

  async function* watch(service: string, ctx: HandlerContext) {
    const aborted = new Promise<void>((resolve) => {
      if (ctx.signal.aborted) resolve();
      else ctx.signal.addEventListener("abort", () => resolve(), { once: true });
    });
    let last: ServingStatus | undefined;
    for (;;) {
      const status = current(service);
      if (status !== last) {
        last = status;
        yield create(HealthCheckResponseSchema, { status });
      }
      if (closed || ctx.signal.aborted) return;
      await Promise.race([changed.fired, aborted]);
    }
  }

  return {
    register(router) {
      router.service(Health, {
        check(req) {
          const status = statuses.get(req.service);
          if (status === undefined) {
            throw new ConnectError(`unknown service ${JSON.stringify(req.service)}`, Code.NotFound);
          }
          return create(HealthCheckResponseSchema, { status: ServingStatus[status] });
        },
        watch: (req, ctx) => watch(req.service, ctx),
        list() {
          if (statuses.size > maxListedServices) {
            throw new ConnectError("too many services to list", Code.ResourceExhausted);
          }
          const entries = [...statuses].map(([name, status]) => [name, { status: ServingStatus[status] }]);
          return create(HealthListResponseSchema, { statuses: Object.fromEntries(entries) });
        },
      });
    },
    setStatus(service, status) {
      if (closed || statuses.get(service) === status) return;
      statuses.set(service, status);
      announce();
    },
    setAll(status) {
      if (closed) return;
      for (const service of statuses.keys()) statuses.set(service, status);
      announce();
    },
    close() {
      if (closed) return;
      for (const service of statuses.keys()) statuses.set(service, "NOT_SERVING");
      closed = true;
      announce();
    },
  };
}

/** A one-shot wake-up; Promise.withResolvers would do, but the tap runner may be on Node 20. */
function createSignal(): { fired: Promise<void>; fire(): void } {
  let fire = (): void => {};
  const fired = new Promise<void>((resolve) => (fire = resolve));
  return { fired, fire };
}
