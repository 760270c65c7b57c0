/**
 * Where the bench's traced processes export (OTLP over HTTP, protobuf, the
 * SDK's default): it answers every export at once with an empty success and
 * keeps only counts, so that what the bench measures is the cost of tracing
 * in our processes, not of a collector.
 */
import http from 'node:http'
import type { AddressInfo } from 'node:net'

export interface TraceSink {
  /** for OTEL_EXPORTER_OTLP_ENDPOINT */
  url: string
  /** export requests and bytes received */
  received: () => { exports: number, bytes: number }
  close: () => Promise<void>
}

export async function startTraceSink (): Promise<TraceSink> {
  let exports = 0
  let bytes = 0
  const server = http.createServer((req, res) => {
    req.on('data', (chunk: Buffer) => { bytes += chunk.length })
    req.on('end', () => {
      if (req.url === '/v1/traces') exports++
      res.writeHead(200, { 'content-type': 'application/x-protobuf', 'content-length': '0' })
      res.end()
    })
  })
  await new Promise<void>((resolve) => { server.listen(0, '127.0.0.1', resolve) })
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    received: () => ({ exports, bytes }),
    close: async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => { server.close(() => { resolve() }) })
    },
  }
}
