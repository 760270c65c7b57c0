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
import type { Socket } from 'node:net'
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify'
import { catalogueBody, errorBody, isErrorCode, type ErrorCode } from '../shared/error-catalogue'
import { STATUS_CODES } from 'node:http'

interface ClientError extends Error {
  code?: string
}

function codeFor (err: ClientError): ErrorCode {
  if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT') return 'REQUEST_TIMEOUT'
  if (err.code === 'HPE_HEADER_OVERFLOW') return 'HEADERS_TOO_LARGE'
  return 'BAD_HTTP_REQUEST'
}

export function clientErrorHandler (err: ClientError, socket: Socket): void {
  // A reset connection has nobody to answer.
  if (err.code === 'ECONNRESET' || socket.destroyed) return
  const body = catalogueBody(codeFor(err))
  const text = JSON.stringify(body)
  if (socket.writable) {
    socket.write(`HTTP/1.1 ${body.statusCode} ${STATUS_CODES[body.statusCode] ?? ''}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`)
  }
  socket.destroy(err)
}

export function frameworkErrorHandler (err: FastifyError, request: FastifyRequest, reply: FastifyReply): void {
  const code = err.code ?? 'BAD_REQUEST'
  request.log.info({ code, url: request.url.slice(0, 200) }, 'request refused by the router')
  const body = isErrorCode(code) ? catalogueBody(code) : errorBody(400, 'Bad request', code)
  void reply.code(body.statusCode).send(body)
}
