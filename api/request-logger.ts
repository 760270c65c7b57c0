/**
 * Each request's logger (Fastify's `childLoggerFactory`): the pino child with
 * the request's id bound, made when the request first logs at a level that is
 * on. pino makes a child at once: it serializes and redacts the bindings and
 * sets the child's level, about 8 µs of a single buyer's purchase in the API's
 * profile, on every request. At LOG_LEVEL=warn or above (the bench's, or a
 * busy sale's) a request logs only when something fails, so most never make
 * one; at `info`, Fastify logs two lines a request and the child is made at
 * the first. A call at a level that is off costs a comparison.
 * @see https://fastify.dev/docs/latest/Reference/Server/#childloggerfactory
 */
import type { FastifyBaseLogger } from 'fastify'
import type { Bindings, ChildLoggerOptions, LevelWithSilentOrString, LogFn, Logger } from 'pino'

class RequestLogger {
  private made: Logger | undefined

  constructor (private readonly parent: Logger, private readonly bindings: Bindings, private readonly options: ChildLoggerOptions) {}

  private get logger (): Logger {
    this.made ??= this.parent.child(this.bindings, this.options)
    return this.made
  }

  get level (): LevelWithSilentOrString {
    return this.made?.level ?? this.options.level ?? this.parent.level
  }

  set level (level: LevelWithSilentOrString) {
    this.logger.level = level
  }

  private on (level: string): boolean {
    return (this.made ?? this.parent).isLevelEnabled(level)
  }

  fatal (...args: Parameters<LogFn>): void { if (this.on('fatal')) this.logger.fatal(...args) }
  error (...args: Parameters<LogFn>): void { if (this.on('error')) this.logger.error(...args) }
  warn (...args: Parameters<LogFn>): void { if (this.on('warn')) this.logger.warn(...args) }
  info (...args: Parameters<LogFn>): void { if (this.on('info')) this.logger.info(...args) }
  debug (...args: Parameters<LogFn>): void { if (this.on('debug')) this.logger.debug(...args) }
  trace (...args: Parameters<LogFn>): void { if (this.on('trace')) this.logger.trace(...args) }
  silent (): void {}

  child (bindings: Bindings, options?: ChildLoggerOptions): FastifyBaseLogger {
    return this.logger.child(bindings, options)
  }

  isLevelEnabled (level: string): boolean {
    return this.on(level)
  }
}

/** A pino parent gets a RequestLogger; any other (an app built with `logger: false`) makes its child at once. */
export function requestLogger (logger: FastifyBaseLogger, bindings: Bindings, options: ChildLoggerOptions): FastifyBaseLogger {
  const parent = logger as Partial<Logger>
  if (typeof parent.isLevelEnabled !== 'function') return logger.child(bindings, options)
  return new RequestLogger(parent as Logger, bindings, options) as unknown as FastifyBaseLogger
}
