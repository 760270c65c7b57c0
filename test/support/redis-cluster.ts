/**
 * A real Redis Cluster of the test's own, from `redis-server` on loopback
 * ports: `masters` masters with one replica each, made with
 * `redis-cli --cluster create`, and a short node timeout so that a failover
 * takes seconds. Every node is killed and its folder removed in teardown.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { Redis } from 'ioredis'
import type { Teardown } from './environment'
import { sleep } from './wait'

export interface ClusterNode {
  port: number
  /** the node's process; gone once killed */
  child: ChildProcess
  exited: Promise<void>
}

export interface RedisCluster {
  nodes: ClusterNode[]
  /** for REDIS_CLUSTER_NODES */
  seeds: string
  /** Ports of the nodes that are masters now, by CLUSTER NODES as one live node sees it. */
  masters: () => Promise<number[]>
  /** A plain connection to one node. */
  connect: (port: number) => Redis
  /** Resolves once every live node reports cluster_state:ok (and a master for every slot); returns how long it took (ms). */
  waitUntilOk: (timeoutMs?: number) => Promise<number>
  /** SIGKILL a node. */
  kill: (port: number) => Promise<void>
}

async function isFree (port: number): Promise<boolean> {
  return await new Promise<boolean>((resolve) => {
    const server = net.createServer()
    server.once('error', () => { resolve(false) })
    server.listen(port, '127.0.0.1', () => { server.close(() => { resolve(true) }) })
  })
}

/**
 * `count` consecutive client ports whose cluster bus ports (+10000) are free
 * too, all below Linux's ephemeral range (32768), so nothing else takes them.
 */
async function freePorts (count: number): Promise<number[]> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const base = 20_000 + Math.floor(Math.random() * (2700 - count))
    const ports = Array.from({ length: count }, (_, i) => base + i)
    if ((await Promise.all([...ports, ...ports.map((p) => p + 10_000)].map(isFree))).every(Boolean)) return ports
  }
  throw new Error('no free ports for a Redis Cluster')
}

const NODE_TIMEOUT_MS = 1000

export async function startRedisCluster (t: Teardown, masters = 3): Promise<RedisCluster> {
  const ports = await freePorts(masters * 2)
  const dir = mkdtempSync(path.join(os.tmpdir(), 'redis-cluster-'))
  const nodes: ClusterNode[] = []
  const probes: Redis[] = []
  t.teardown(async () => {
    for (const probe of probes) probe.disconnect()
    for (const node of nodes) node.child.kill('SIGKILL')
    await Promise.all(nodes.map(async (n) => { await n.exited }))
    rmSync(dir, { recursive: true, force: true })
  })

  for (const port of ports) {
    const child = spawn('redis-server', [
      '--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
      '--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', String(NODE_TIMEOUT_MS),
      '--save', '', '--appendonly', 'no', '--maxmemory-policy', 'noeviction',
      '--logfile', path.join(dir, `${port}.log`),
    ], { stdio: 'ignore' })
    nodes.push({ port, child, exited: new Promise((resolve) => { child.once('exit', () => { resolve() }) }) })
  }

  const connect = (port: number): Redis => {
    const probe = new Redis({ host: '127.0.0.1', port, lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null, connectTimeout: 500 })
    probe.on('error', () => {})
    probes.push(probe)
    return probe
  }
  const answers = async (port: number): Promise<boolean> => {
    const probe = connect(port)
    try {
      await probe.connect()
      return await probe.ping() === 'PONG'
    } catch {
      return false
    } finally {
      probe.disconnect()
    }
  }
  for (const port of ports) {
    const deadline = Date.now() + 10_000
    while (!await answers(port)) {
      if (Date.now() > deadline) throw new Error(`redis-server on ${port} did not start`)
      await sleep(50)
    }
  }
  const created = spawnSync('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8', timeout: 30_000 })
  if (created.status !== 0) throw new Error(`redis-cli --cluster create failed:\n${created.stdout}${created.stderr}`)

  const live = (): ClusterNode[] => nodes.filter((n) => n.child.exitCode === null && n.child.signalCode === null)
  const info = async (port: number, command: 'INFO' | 'NODES'): Promise<string> => {
    const probe = connect(port)
    try {
      await probe.connect()
      return String(await probe.call('CLUSTER', command))
    } finally {
      probe.disconnect()
    }
  }
  const cluster: RedisCluster = {
    nodes,
    seeds: ports.map((p) => `127.0.0.1:${p}`).join(','),
    masters: async () => {
      for (const node of live()) {
        try {
          const text = await info(node.port, 'NODES')
          // <id> <ip:port@bus> <flags: myself,master,fail?,…> …
          const flags = (line: string): string[] => (line.split(' ')[2] ?? '').split(',')
          return text.split('\n').filter((l) => flags(l).includes('master') && !flags(l).some((f) => f.startsWith('fail'))).map((l) => Number(/:(\d+)@/.exec(l)?.[1]))
        } catch {}
      }
      throw new Error('no live node answers CLUSTER NODES')
    },
    connect,
    waitUntilOk: async (timeoutMs = 30_000) => {
      const started = Date.now()
      for (;;) {
        const states = await Promise.all(live().map(async (n) => await info(n.port, 'INFO').catch(() => '')))
        if (states.length > 0 && states.every((s) => s.includes('cluster_state:ok') && s.includes('cluster_slots_ok:16384'))) return Date.now() - started
        if (Date.now() - started > timeoutMs) throw new Error(`cluster not ok after ${timeoutMs} ms: ${states.map((s) => /cluster_state:\w+/.exec(s)?.[0] ?? '?').join(', ')}`)
        await sleep(100)
      }
    },
    kill: async (port) => {
      const node = nodes.find((n) => n.port === port)
      node?.child.kill('SIGKILL')
      await node?.exited
    },
  }
  await cluster.waitUntilOk()
  return cluster
}
