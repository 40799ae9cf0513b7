/**
 * Group commit: items that arrive while a write is in flight are written together by the next
 * one. An idle caller waits for nothing (its item is written on the next tick, alone); under
 * load one statement carries many items, so the round trips per item fall as the load rises.
 */
export interface GroupCommit<T, R> {
  /** Queues an item; resolves with its share of the write's result. */
  add(item: T): Promise<R>;
  /** Resolves once everything queued so far is written. */
  drain(): Promise<void>;
}

export interface GroupCommitOptions {
  /** At most this many items per write. */
  maxItems?: number;
  /**
   * Writes in flight at once (default 1). With two, the next group need not wait for the WAL
   * flush of the one before; items are still grouped while both are busy.
   */
  maxInFlight?: number;
  /**
   * Wait this long before writing a group instead of one tick: for writes nobody waits on,
   * where fewer, larger statements are worth some delay.
   */
  lingerMs?: number;
}

/**
 * `write` takes a group and returns one result per item, in order. A write that throws rejects
 * every item of its group; the next group is written regardless.
 */
export function groupCommit<T, R>(write: (items: T[]) => Promise<R[]>, options: GroupCommitOptions = {}): GroupCommit<T, R> {
  const maxItems = options.maxItems ?? 256;
  const maxInFlight = options.maxInFlight ?? 1;
  let queued: { item: T; resolve: (r: R) => void; reject: (e: unknown) => void }[] = [];
  /** Writers running: each waits a tick (or the linger), then writes groups while any are queued. */
  const writers = new Set<Promise<void>>();

  async function writer(): Promise<void> {
    // One tick lets the callers that run in this turn of the event loop join the first group.
    await new Promise<void>((resolve) => (options.lingerMs ? setTimeout(resolve, options.lingerMs) : setImmediate(resolve)));
    while (queued.length > 0) {
      const group = queued.slice(0, maxItems);
      queued = queued.slice(group.length);
      try {
        const results = await write(group.map((g) => g.item));
        group.forEach((g, i) => g.resolve(results[i]));
      } catch (error) {
        for (const g of group) g.reject(error);
      }
    }
  }

  function start() {
    if (writers.size >= maxInFlight) return;
    const running: Promise<void> = writer().finally(() => {
      writers.delete(running);
      if (queued.length > 0) start();
    });
    writers.add(running);
  }

  return {
    add(item) {
      const result = new Promise<R>((resolve, reject) => queued.push({ item, resolve, reject }));
      start();
      return result;
    },
    async drain() {
      while (writers.size > 0) await Promise.all([...writers]);
    },
  };
}
