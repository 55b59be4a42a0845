'use strict';
/*
 * N tokenbrokerd nodes on one throwaway PostgreSQL 15 (issue 10's tests):
 * the nodes' configs (store, store_password_file, node_name, the first
 * node's key file for the others), starting them in order, waiting until
 * every running node sees the others alive or serves one token, a node
 * SIGKILLed or restarted, and a TCP proxy in front of PostgreSQL whose
 * link can be cut (drop every open connection, refuse new ones) for the
 * nodes named in `proxied`. Everything is stopped by PID in destroy().
 *
 *   const cl = await Cluster.create({ nodes: 3, proxied: [2] });
 *   t.after(() => cl.destroy({ keep: !passed }));
 *   // the provider may need cl.nodes[i].redirectUrisFor(...) first
 *   await cl.start((i) => ({ providers, secrets, broker: { ... }, logLevel }));
 *   await cl.waitLive();
 *   await cl.kill(1); await cl.restart(1);
 *   cl.proxies[2].cut(); cl.proxies[2].restore();
 */
const net = require('node:net');
const path = require('node:path');

const { Broker, waitFor, freePort, iniProvider } = require('./broker.js');
const { Postgres } = require('./pg.js');

const NAMES = 'abcdefghijklmnopqrstuvwxyz';

/*
 * A TCP proxy in front of PostgreSQL whose link can be cut: cut() destroys
 * every open connection and, until restore(), closes each new one at once.
 */
async function startCutProxy(targetPort) {
  const socks = new Set();
  let cut = false;
  const stats = { accepted: 0, refused: 0, dropped: 0 };
  const server = net.createServer((down) => {
    if (cut) { stats.refused++; down.destroy(); return; }
    stats.accepted++;
    const up = net.connect(targetPort, '127.0.0.1');
    const pair = [down, up];
    const end = () => { for (const s of pair) { s.destroy(); socks.delete(s); } };
    for (const s of pair) { socks.add(s); s.on('error', end); s.on('close', end); }
    down.pipe(up);
    up.pipe(down);
  });
  const port = await freePort();
  await new Promise((resolve, reject) => { server.once('error', reject); server.listen(port, '127.0.0.1', resolve); });
  return {
    port,
    stats,
    cut() { cut = true; for (const s of socks) { stats.dropped++; s.destroy(); } socks.clear(); },
    restore() { cut = false; },
    async close() {
      for (const s of socks) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** The access token a node hands out for a connection, or null. */
async function tokenOf(b, name, o) {
  const r = await b.api('GET', `/v1/connections/${name}/token`, undefined, o);
  return r.status === 200 ? r.json.access_token : null;
}

class Cluster {
  constructor(pg, nodes, names, proxies) {
    this.pg = pg;
    this.nodes = nodes;
    this.names = names;
    this.proxies = proxies;   // node index -> its cut proxy (only the proxied ones)
  }

  /**
   * Starts PostgreSQL (and the proxies) and prepares `nodes` brokers (their
   * ports and folders: a provider may need their redirect URIs). fsync off
   * by default: the tests need no durability of the database's own.
   */
  static async create({ nodes = 3, names, proxied = [], fsync = false } = {}) {
    const pg = await Postgres.start({ fsync });
    const brokers = [];
    const proxies = {};
    try {
      for (const i of proxied) proxies[i] = await startCutProxy(pg.port);
      for (let i = 0; i < nodes; i++) brokers.push(await Broker.prepare());
    } catch (e) {
      for (const p of Object.values(proxies)) await p.close();
      await pg.destroy();
      throw e;
    }
    return new Cluster(pg, brokers, names ?? NAMES.slice(0, nodes).split(''), proxies);
  }

  /**
   * A cluster on fake provider fp (tests/lib/fake-provider.js, as provider
   * `fake`), started, its cleanup registered on test t before any node
   * starts: cleanup() (the test's own: readers, restarts in flight), the
   * nodes, the proxies, PostgreSQL, then fp. Folders are kept unless the
   * test sets cl.passed = true.
   */
  static async onFakeProvider(t, fp, { nodes = 3, proxied = [], secret = 'ha-client-secret', broker = {}, logLevel, cleanup } = {}) {
    const cl = await Cluster.create({ nodes, proxied });
    cl.passed = false;
    t.after(async () => {
      if (cleanup) await cleanup();
      await cl.destroy({ keep: !cl.passed });
      await fp.close();
    });
    await cl.start(() => ({
      providers: { fake: iniProvider(fp.providerConf()) },
      secrets: { 'fake.secret': secret },
      broker,
      ...(logLevel ? { logLevel } : {}),
    }));
    return cl;
  }

  /** The store URI node i is given: PostgreSQL's, or its proxy's. */
  storeUri(i) {
    const p = this.proxies[i];
    return p ? `postgresql://tokenbroker@127.0.0.1:${p.port}/tokenbroker` : this.pg.uri();
  }

  /** The first node's key file: the others are given it (one key). */
  get keyFile() { return path.join(this.nodes[0].dir, 'state', 'tokenbroker.key'); }

  /**
   * Writes every node's config: optsOf(i, name) gives the test's broker
   * options (providers, secrets, broker, logLevel, env); the cluster adds
   * store, store_password_file, node_name and key_file. Then starts them
   * in order (the first makes the key the others share).
   */
  async start(optsOf) {
    for (let i = 0; i < this.nodes.length; i++) {
      const o = optsOf(i, this.names[i]) ?? {};
      this.nodes[i].opts = {
        ...o,
        broker: {
          store: this.storeUri(i),
          store_password_file: this.pg.passwordFile,
          node_name: this.names[i],
          ...(i > 0 ? { key_file: this.keyFile } : {}),
          ...(o.broker ?? {}),
        },
      };
      this.nodes[i].writeConfig();
      await this.nodes[i].launch();
    }
  }

  node(name) { return this.nodes[this.names.indexOf(name)]; }

  running() { return this.nodes.filter((n) => n.running()); }

  /** /v1/status of node i (or of the first running node). */
  async status(i) {
    const b = i === undefined ? this.running()[0] : this.nodes[i];
    return (await b.api('GET', '/v1/status')).json;
  }

  /** Waits until every running node (or those given) sees `count` live nodes (default: every running one). */
  async waitLive({ count, on, timeoutMs = 30000, intervalMs = 100, what } = {}) {
    await waitFor(async () => {
      const nodes = on ?? this.running();
      const want = count ?? nodes.length;
      for (const n of nodes) {
        const st = (await n.api('GET', '/v1/status')).json;
        if ((st.nodes ?? []).filter((x) => x.alive).length !== want) return false;
        if (st.store && st.store.reachable === false) return false;
      }
      return true;
    }, { timeoutMs, intervalMs, what: what ?? 'every running node seeing the live nodes' });
  }

  /** Waits until every running node (or those given) serves the same token for name; resolves it. */
  async sameToken(name, { on, timeoutMs = 10000, want, what } = {}) {
    return waitFor(async () => {
      const toks = await Promise.all((on ?? this.running()).map((n) => tokenOf(n, name)));
      const first = toks[0];
      if (!first || !toks.every((x) => x === first)) return null;
      if (want && !want(first)) return null;
      return first;
    }, { timeoutMs, what: what ?? `the same token for ${name} on every running node` });
  }

  /** The name of the node holding name's lease (single-connection clusters: any lease), or null. */
  async holder(i) {
    const st = await this.status(i);
    const h = (st.nodes ?? []).find((n) => n.holds > 0);
    return h ? h.name : null;
  }

  /** The node holding connection name's lease now (on the database's clock), or null. */
  async leaseOf(name) {
    const out = await this.pg.psql(`SELECT lease_node FROM connections WHERE name = '${name.replace(/'/g, "''")}' ` +
      'AND lease_until > (extract(epoch from clock_timestamp()) * 1000000)::bigint');
    return out.trim() || null;
  }

  async kill(i, signal = 'SIGKILL') { await this.nodes[i].kill(signal); }

  async restart(i) { await this.nodes[i].launch(); }

  /** Stops every node (SIGTERM, by PID), the proxies and PostgreSQL. */
  async destroy({ keep = false } = {}) {
    for (const b of this.nodes) await b.stop({ keep }).catch(() => {});
    for (const p of Object.values(this.proxies)) await p.close().catch(() => {});
    await this.pg.destroy();
  }
}

module.exports = { Cluster, startCutProxy, tokenOf };
