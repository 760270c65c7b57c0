/**
 * pino options shared by the API and the worker: JSON lines, pretty only on a
 * terminal, and secrets redacted.
 * @see https://getpino.io/#/docs/redaction
 */
import pino, { type LoggerOptions, type Logger } from 'pino'
import type { Config } from './config'

export function loggerOptions (config: Pick<Config, 'logLevel' | 'logPretty'>, name: string): LoggerOptions {
  return {
    name,
    level: config.logLevel,
    redact: {
      paths: ['req.headers.authorization', 'req.headers.cookie', 'headers.authorization', 'config.databaseUrl', 'config.redisUrl', 'config.dashboard.password', '*.password'],
      censor: '***',
    },
    ...(config.logPretty ? { transport: { target: 'pino-pretty', options: { translateTime: 'SYS:HH:MM:ss.l' } } } : {}),
  }
}

export function createLogger (config: Pick<Config, 'logLevel' | 'logPretty'>, name: string): Logger {
  return pino(loggerOptions(config, name))
}
