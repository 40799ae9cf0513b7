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
  let queued: { item: T; resolve: (r: R) => void; reject: (e: unknown) => void }[] = [];
  let writing: Promise<void> | undefined;

  async function flush(): Promise<void> {
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
    writing ??= (async () => {
      // One tick lets the callers that run in this turn of the event loop join the first group.
      await new Promise<void>((resolve) => (options.lingerMs ? setTimeout(resolve, options.lingerMs) : setImmediate(resolve)));
      await flush();
    })().finally(() => {
      writing = undefined;
      if (queued.length > 0) start();
    });
  }

  return {
    add(item) {
      const result = new Promise<R>((resolve, reject) => queued.push({ item, resolve, reject }));
      start();
      return result;
    },
    async drain() {
      while (writing) await writing;
    },
  };
}
