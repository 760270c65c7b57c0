/**
 * Started by `npm start` (launcher/main.ts), the API and the worker run in
 * process groups of their own and hold an IPC channel to the launcher. If the
 * launcher dies, they close as on SIGTERM instead of running on unowned.
 */
export function stopWhenOrphaned (): void {
  if (process.send === undefined) return
  process.on('disconnect', () => { process.kill(process.pid, 'SIGTERM') })
}
