// A bank under repeated leader kills, on a real two-node cluster. 16 accounts, all on one shard
// (--routing id, --shards 2, even ids), each opened with 1000. Workers move money: each transfer
// is one two-aggregate write — a Debited event on one account and a Credited event on another,
// each guarded by the exact version the worker read — sent through writeExactlyOnce with one
// clientSeq per transfer (the same on every retry). The leader is SIGKILLed three times during
// the run (and restarted to follow). At the end, read from each node: the total balance is
// conserved, no transfer is applied twice on any account, every transfer has both its sides,
// every acknowledged transfer is there, both nodes hold the same events and the same chains.
import { test } from 'node:test';
import { prng } from '../lib/prng.ts';
import assert from 'node:assert/strict';
import { WrongExpectedVersionError, type AggregateKey, type CelerClient } from '@celer/client';
import { clusterSuite, errorText, keyText, now, readBothAndCompare, sleep, td, te, withLogs } from './lib/cluster.ts';

const ACCOUNTS = 16;
const OPENING = 1000;
const WORKERS = 6;
const KILLS = 3;

const suite = clusterSuite({ args: ['--routing', 'id'] });

/** Account a: id 2a, so every account is on shard 0 of 2. */
const account = (a: number): AggregateKey => ({ org: 8, type: 1, id: 2 * a });

interface Transfer {
  id: string;
  from: number;
  to: number;
  amount: number;
}


test(`bank transfers under ${KILLS} leader kills: balance conserved, none twice, every acknowledged one on both nodes`, { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    let roles = await cl.waitForRoles();
    console.log(`leader n${roles.leader}, epoch ${roles.epoch}`);
    const client: CelerClient = await cl.client({ requestTimeoutMs: 5_000, failoverTimeoutMs: 10_000 });
    const acked: Transfer[] = [];
    const unknown: Transfer[] = [];
    let conflicts = 0;
    let retriesAfterUnknown = 0;
    const errors: string[] = [];
    let stopping = false;
    try {
      for (let a = 0; a < ACCOUNTS; a++) {
        await client.append(account(a), [{ type: 'Opened', data: te.encode(JSON.stringify({ balance: OPENING })) }], { expectedVersion: 'no_stream' });
      }
      const worker = async (w: number): Promise<void> => {
        const rnd = prng(1000 + w);
        const clientId = 5000 + w;
        let seq = 0n;
        for (let n = 1; !stopping; n++) {
          const from = Math.floor(rnd() * ACCOUNTS);
          const to = (from + 1 + Math.floor(rnd() * (ACCOUNTS - 1))) % ACCOUNTS;
          const t: Transfer = { id: `t${w}-${n}`, from, to, amount: 1 + Math.floor(rnd() * 100) };
          let versions: [bigint, bigint];
          try {
            versions = [(await client.details(account(from))).version, (await client.details(account(to))).version];
          } catch (e) {
            errors.push(`details: ${errorText(e)}`);
            await sleep(50);
            continue;
          }
          seq++;
          const input = {
            clientId,
            writes: [
              { key: account(from), events: [{ type: 'Debited', data: te.encode(JSON.stringify(t)) }], expectedVersion: versions[0], clientSeq: seq },
              { key: account(to), events: [{ type: 'Credited', data: te.encode(JSON.stringify(t)) }], expectedVersion: versions[1], clientSeq: seq },
            ],
          };
          // The same write (same clientSeq, same guards) until its outcome is known.
          for (let attempt = 0; ; attempt++) {
            try {
              await client.writeExactlyOnce(input);
              acked.push(t);
              break;
            } catch (e) {
              if (e instanceof WrongExpectedVersionError) {
                // A real conflict — or, on a later call after an unknown outcome, possibly our own
                // earlier attempt: the transfer's outcome is then unknown, never re-decided.
                if (attempt === 0) conflicts++;
                else unknown.push(t);
                break;
              }
              errors.push(errorText(e));
              retriesAfterUnknown++;
              if (stopping) {
                unknown.push(t);
                break;
              }
              await sleep(100);
            }
          }
        }
      };
      const workers = Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)));
      const windows: number[] = [];
      try {
        await cl.waitFor('100 transfers', () => acked.length >= 100, 60_000);
        for (let k = 1; k <= KILLS; k++) {
          const before = acked.length;
          await cl.waitFor(`transfers before kill ${k}`, () => acked.length >= before + 100, 60_000);
          const killed = roles.leader;
          const t = now();
          await cl.kill(killed, 'SIGKILL');
          const next = await cl.waitForRoles(30_000, { epochAbove: roles.epoch });
          const atKill = acked.length;
          await cl.waitFor('a transfer after the kill', () => acked.length > atKill, 30_000);
          windows.push(now() - t);
          console.log(`kill ${k}: n${killed} SIGKILLed; n${next.leader} leader with epoch ${next.epoch}; first transfer acknowledged ${(now() - t).toFixed(0)} ms after the kill; ${acked.length} acknowledged so far`);
          await cl.start(killed);
          roles = await cl.waitForRoles(60_000, { leader: next.leader });
        }
        const end = acked.length;
        await cl.waitFor('transfers after the last kill', () => acked.length >= end + 100, 60_000);
      } finally {
        stopping = true;
        await workers;
      }
      console.log(
        `${acked.length} transfers acknowledged, ${conflicts} refused by a guard (conflicts), ${unknown.length} of unknown outcome, ${retriesAfterUnknown} retries after errors; ` +
          `kill → first transfer: ${windows.map((w) => w.toFixed(0)).join(', ')} ms; errors: ${[...new Set(errors)].slice(0, 5).join('; ') || 'none'}`,
      );
    } finally {
      await client.close();
    }

    await cl.waitConverged(60_000);
    const keys = Array.from({ length: ACCOUNTS }, (_, a) => account(a));
    const read = await readBothAndCompare(cl, keys);
    const problems: string[] = [];
    let total = 0;
    const debits = new Map<string, Transfer>();
    const credits = new Map<string, Transfer>();
    for (let a = 0; a < ACCOUNTS; a++) {
      const seen = new Set<string>();
      let balance = 0;
      for (const b of read.get(keyText(account(a)))!) {
        for (const e of b.events) {
          const body = JSON.parse(td.decode(e.data)) as Transfer & { balance?: number };
          if (e.type === 'Opened') {
            balance += body.balance!;
            continue;
          }
          if (seen.has(body.id)) problems.push(`account ${a}: transfer ${body.id} applied twice`);
          seen.add(body.id);
          if (e.type === 'Debited') {
            if (body.from !== a) problems.push(`account ${a}: debit of ${body.id} belongs to account ${body.from}`);
            balance -= body.amount;
            debits.set(body.id, body);
          } else {
            if (body.to !== a) problems.push(`account ${a}: credit of ${body.id} belongs to account ${body.to}`);
            balance += body.amount;
            credits.set(body.id, body);
          }
        }
      }
      total += balance;
    }
    for (const id of debits.keys()) if (!credits.has(id)) problems.push(`transfer ${id}: debited but never credited`);
    for (const id of credits.keys()) if (!debits.has(id)) problems.push(`transfer ${id}: credited but never debited`);
    for (const t of acked) if (!debits.has(t.id) || !credits.has(t.id)) problems.push(`acknowledged transfer ${t.id} is missing`);
    const unknownLanded = unknown.filter((t) => debits.has(t.id)).length;
    console.log(`read back from both nodes (identical): ${debits.size} transfers applied (${acked.length} acknowledged + ${unknownLanded} of the ${unknown.length} unknown ones); total balance ${total} (expected ${ACCOUNTS * OPENING})`);
    assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
    assert.equal(total, ACCOUNTS * OPENING, 'the total balance is conserved');
    assert.equal(debits.size, acked.length + unknownLanded, 'nothing applied that was neither acknowledged nor of unknown outcome');
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);
