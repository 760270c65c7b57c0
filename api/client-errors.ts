/**
 * Answers requests that never reach a route or the root error handler in the
 * usual error body, `{statusCode, error, message, code}` (API.md "Errors"):
 * - `clientErrorHandler`: Node's HTTP parser or timer refused the request (a
 *   malformed request line, headers too large, a request that did not arrive
 *   within REQUEST_TIMEOUT_MS). Fastify's default body has no `code`.
 * - `frameworkErrorHandler`: the router refused the URL (bad percent-encoding,
 *   a path segment over 100 characters). Fastify's default echoes the whole
 *   path and says "Bad Request" for a 414.
 * @see https://fastify.dev/docs/latest/Reference/Server/#clienterrorhandler
 * @see https://fastify.dev/docs/latest/Reference/Server/#frameworkerrors
 */
import { STATUS_CODES } from 'node:http'
import type { Socket } from 'node:net'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'

interface ClientError extends Error {
  code?: string
}

function answerFor (err: ClientError): { status: number, message: string, code: string } {
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return { status: 408, message: 'The request did not arrive in time', code: 'REQUEST_TIMEOUT' }
  if (err.code === 'HPE_HEADER_OVERFLOW') return { status: 431, message: 'The request headers are too large', code: 'HEADERS_TOO_LARGE' }
  return { status: 400, message: 'Malformed HTTP request', code: 'BAD_HTTP_REQUEST' }
}

export function clientErrorHandler (err: ClientError, socket: Socket): void {
  // A reset connection has nobody to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const { status, message, code } = answerFor(err)
  const body = JSON.stringify({ statusCode: status, error: STATUS_CODES[status], message, code })
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
  }
  socket.destroy(err)
}

const FRAMEWORK_MESSAGES: Record<string, string> = {
  FST_ERR_BAD_URL: 'The URL is not valid (bad percent-encoding)',
  FST_ERR_MAX_PARAM_LENGTH: 'A path segment of the URL is too long',
}

export function frameworkErrorHandler (err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const status = typeof err.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 500 ? err.statusCode : 400
  const code = err.code ?? 'BAD_REQUEST'
  request.log.info({ code, url: request.url.slice(0, 200) }, 'request refused by the router')
  void reply.code(status).send({ statusCode: status, error: STATUS_CODES[status] ?? 'Error', message: FRAMEWORK_MESSAGES[code] ?? 'Bad request', code })
}
