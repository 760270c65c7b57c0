/**
 * Hides the password of a connection string (`scheme://user:password@host`),
 * wherever it is shown: log lines (shared/logger.ts) and configuration errors
 * (shared/config.ts). Greedy up to the last `@` before the path, so a password
 * with a raw `@` in it is hidden whole.
 */
export function redactUrl (url: string): string {
  return url.replace(/\/\/([^:/@]*):([^/]*)@/, '//$1:***@')
}
