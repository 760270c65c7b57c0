/**
 * Rate limit of purchase requests per client (RATE_LIMIT_PURCHASES_PER_MINUTE,
 * 0 = off, which is what tests and the bench run with). Only routes that ask
 * for it with `config: { rateLimit: {} }` are limited: today the purchase route.
 * Over the limit: 429 with Retry-After and the usual error body (RATE_LIMITED),
 * checked in onRequest, before the body is read or the database asked.
 *
 * Keyed by `request.ip`: behind a proxy or load balancer that is the proxy's
 * address unless Fastify's `trustProxy` is set for it. Counts are kept in each
 * API process's memory, so N replicas allow up to N times the limit per
 * client; a shared (Redis) store would make a Redis outage fail the limiter too.
 * @see https://github.com/fastify/fastify-rate-limit
 */
import rateLimit from '@fastify/rate-limit'
import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import type { Config } from '../../shared/config'
import { RateLimitedError } from '../../shared/error-catalogue'

export interface RateLimitOptions {
  config: Config
}

async function rateLimitPlugin (app: FastifyInstance, { config }: RateLimitOptions): Promise<void> {
  if (config.rateLimitPurchasesPerMinute === 0) return
  await app.register(rateLimit, {
    global: false,
    max: config.rateLimitPurchasesPerMinute,
    timeWindow: 60_000,
    keyGenerator: (request) => request.ip,
    // Thrown, so the root error handler writes it like every other 4xx; the plugin has set Retry-After already.
    errorResponseBuilder: (_request, context) => new RateLimitedError(context.after),
  })
}

// Not encapsulated: the limiter's onRoute hook must see routes registered after it.
export default fp(rateLimitPlugin, { name: 'rate-limit', dependencies: ['error-handler'] })
