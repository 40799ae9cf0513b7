/**
 * Wraps a response stream so interceptors can observe its messages, its end and its error:
 * a server-streaming call is not over when the handler returns, but when its stream is.
 */
export async function* mapStream<T>(
  source: AsyncIterable<T>,
  onMessage: (message: T) => T,
  onError: (error: unknown) => unknown,
  onEnd?: () => void,
): AsyncGenerator<T> {
  try {
    for await (const message of source) yield onMessage(message);
  } catch (error) {
    throw onError(error);
  } finally {
    onEnd?.();
  }
}
