/**
 * Summarizes V8 .cpuprofile files (from `node --cpu-prof`): the functions with
 * the most self time, and self time grouped by package. Run on its own:
 *   npx tsx bench/profile-summary.ts bench/results/profiles/*.cpuprofile
 */
import { readFileSync } from 'node:fs'
import path from 'node:path'

interface ProfileNode {
  id: number
  callFrame: { functionName: string, url: string, lineNumber: number }
  hitCount?: number
}

interface CpuProfile {
  nodes: ProfileNode[]
  startTime: number
  endTime: number
  samples: number[]
  timeDeltas: number[]
}

function where (url: string): string {
  if (url === '') return '(native)'
  const nm = url.lastIndexOf('node_modules/')
  if (nm >= 0) {
    const rest = url.slice(nm + 'node_modules/'.length).split('/')
    return rest[0]?.startsWith('@') === true ? `${rest[0]}/${rest[1] ?? ''}` : rest[0] ?? url
  }
  if (url.startsWith('node:')) return url
  return path.relative(process.cwd(), url.replace(/^file:\/\//, ''))
}

export function summarizeProfiles (files: string[], top = 25): string {
  const out: string[] = []
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile
    const byId = new Map(profile.nodes.map((n) => [n.id, n]))
    const self = new Map<number, number>()
    // Self time per node: each sample's delta goes to the node that was on top.
    for (let i = 0; i < profile.samples.length; i++) {
      const id = profile.samples[i] as number
      self.set(id, (self.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0))
    }
    const total = [...self.values()].reduce((a, b) => a + b, 0)
    const idle = [...self].filter(([id]) => byId.get(id)?.callFrame.functionName === '(idle)').reduce((a, [, t]) => a + t, 0)
    const busy = total - idle
    const fns = new Map<string, number>()
    const pkgs = new Map<string, number>()
    for (const [id, t] of self) {
      const node = byId.get(id)
      if (node === undefined || node.callFrame.functionName === '(idle)') continue
      const { functionName, url, lineNumber } = node.callFrame
      const key = `${functionName || '(anonymous)'}  ${where(url)}${url === '' ? '' : `:${lineNumber + 1}`}`
      fns.set(key, (fns.get(key) ?? 0) + t)
      const pkg = url === '' ? functionName : where(url).split(':')[0] ?? ''
      pkgs.set(pkg, (pkgs.get(pkg) ?? 0) + t)
    }
    const pct = (t: number): string => `${(100 * t / busy).toFixed(1).padStart(5)}%`
    out.push(`\n== ${path.basename(file)}: ${(total / 1e6).toFixed(1)} s sampled, busy ${(busy / 1e6).toFixed(1)} s (${(100 * busy / total).toFixed(0)}%)`)
    out.push('   top self time (share of busy time):')
    for (const [k, t] of [...fns].sort((a, b) => b[1] - a[1]).slice(0, top)) out.push(`   ${pct(t)}  ${k}`)
    out.push('   by package / file:')
    for (const [k, t] of [...pkgs].sort((a, b) => b[1] - a[1]).slice(0, 15)) out.push(`   ${pct(t)}  ${k}`)
  }
  return out.join('\n')
}

if (require.main === module) {
  const top = Number(process.env.TOP ?? '25')
  process.stdout.write(`${summarizeProfiles(process.argv.slice(2), top)}\n`)
}
