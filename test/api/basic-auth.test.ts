import t from 'tap'
import { basicAuthChecker, parseBasicAuth } from '../../api/dashboard/basic-auth'

const basic = (userPass: string): string => `Basic ${Buffer.from(userPass, 'utf8').toString('base64')}`

t.test('parses the user and password of a basic Authorization header', async (t) => {
  t.same(parseBasicAuth(basic('ops:s3cret')), { user: 'ops', password: 's3cret' })
  t.same(parseBasicAuth(basic('ops:a:b')), { user: 'ops', password: 'a:b' }, 'the password may hold colons')
  t.same(parseBasicAuth(basic('ops:')), { user: 'ops', password: '' })
  t.same(parseBasicAuth(basic('öps:pässword')), { user: 'öps', password: 'pässword' }, 'UTF-8')
  t.same(parseBasicAuth(`basic ${Buffer.from('ops:x').toString('base64')}`), { user: 'ops', password: 'x' }, 'the scheme is case-insensitive')
})

t.test('a missing or malformed header is no credentials', async (t) => {
  for (const header of [undefined, '', 'Basic', 'Basic ', 'Bearer abc', `Digest ${Buffer.from('ops:x').toString('base64')}`, 'Basic !!!', basic('no-colon')]) {
    t.equal(parseBasicAuth(header), null, String(header))
  }
})

t.test('the checker accepts exactly the configured pair', async (t) => {
  const check = basicAuthChecker({ user: 'ops', password: 'correct horse battery' })
  t.equal(check(basic('ops:correct horse battery')), true)
  t.equal(check(basic('ops:correct horse batter')), false, 'a prefix of the password')
  t.equal(check(basic('ops:correct horse battery!')), false, 'a longer password')
  t.equal(check(basic('Ops:correct horse battery')), false, 'the user is case-sensitive')
  t.equal(check(basic('admin:correct horse battery')), false, 'another user')
  t.equal(check(basic(':')), false)
  t.equal(check(undefined), false)
})
