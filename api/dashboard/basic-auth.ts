/**
 * HTTP basic authentication for operator pages (the queue dashboard).
 * Credentials are compared as SHA-256 digests with `timingSafeEqual`, so the
 * time a check takes says nothing about how much of a guess was right, not
 * even its length.
 * @see https://www.rfc-editor.org/rfc/rfc7617
 */
import { createHash, timingSafeEqual } from 'node:crypto'

export interface BasicCredentials {
  readonly user: string
  readonly password: string
}

function digest (value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest()
}

/** The user and password of an `Authorization: Basic …` header, or null when it is missing or malformed. */
export function parseBasicAuth (header: string | undefined): BasicCredentials | null {
  if (header === undefined) return null
  const match = /^Basic[ ]+([A-Za-z0-9+/]+=*)[ ]*$/i.exec(header)
  if (match?.[1] === undefined) return null
  const decoded = Buffer.from(match[1], 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  if (colon < 0) return null
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) }
}

/** A checker for one pair of credentials; the expected digests are computed once. */
export function basicAuthChecker (expected: BasicCredentials): (header: string | undefined) => boolean {
  const user = digest(expected.user)
  const password = digest(expected.password)
  return (header) => {
    const given = parseBasicAuth(header)
    if (given === null) return false
    // Both comparisons always run, so a right user with a wrong password takes as long as neither.
    const userOk = timingSafeEqual(digest(given.user), user)
    const passwordOk = timingSafeEqual(digest(given.password), password)
    return userOk && passwordOk
  }
}
